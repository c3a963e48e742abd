"""Direct alignment losses as pure functions of per-sequence log-probs.

Every loss takes six tensors of shape [B] (one entry per preference pair)::

    policy_chosen_logps       log pi(y_w|x)     policy, summed over response tokens
    policy_rejected_logps     log pi(y_l|x)
    reference_chosen_logps    log ref(y_w|x)    reference, summed (ignored by SimPO)
    reference_rejected_logps  log ref(y_l|x)
    chosen_lengths            |y_w|             response token counts
    rejected_lengths          |y_l|

and returns the per-pair loss [B]; the trainer averages it. With
``h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))`` (the implicit
reward margin divided by beta) and ``s = sigmoid``:

======  ==========================================================  ========================
name    loss per pair                                               paper
======  ==========================================================  ========================
dpo     -log s(beta h)                                               Rafailov et al. 2023
cdpo    -(1-eps) log s(beta h) - eps log s(-beta h)                  conservative DPO
rdpo    [-(1-eps) log s(beta h) + eps log s(-beta h)] / (1-2 eps)    Chowdhury et al. 2024
ipo     (h - 1/(2 beta))^2                                           Azar et al. 2023
slic    max(0, delta - beta h)                                       Zhao et al. 2023 (SeRA eq. 8)
simpo   -log s(beta (log pi(y_w|x)/|y_w| - log pi(y_l|x)/|y_l|) - gamma)   Meng et al. 2024
======  ==========================================================  ========================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def log_ratio_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
) -> Tensor:
    """``h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))`` [B]."""
    return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


def dpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
        reference_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float, **_) -> Tensor:
    """DPO: ``-log sigmoid(beta * h)``; equals log 2 at h = 0."""
    h = log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return -F.logsigmoid(beta * h)


def cdpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
         reference_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float,
         label_smoothing: float = 0.0, **_) -> Tensor:
    """Conservative DPO: labels flipped with probability eps,
    ``-(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``; eps = 0 is DPO."""
    z = beta * log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def rdpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
         reference_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float,
         label_smoothing: float = 0.0, **_) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024), an unbiased loss under label-flip rate eps < 0.5:
    ``[-(1-eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)``; eps = 0 is DPO."""
    z = beta * log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def ipo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
        reference_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float,
        ipo_per_token: bool = False, **_) -> Tensor:
    """IPO (Azar et al. 2023): ``(h - 1/(2 beta))^2``.

    h uses summed log-probs by default; ``ipo_per_token=True`` uses per-token means
    ``(log pi(y_w|x) - log ref(y_w|x))/|y_w| - (log pi(y_l|x) - log ref(y_l|x))/|y_l|``
    (TRL's ``loss_type="ipo"`` convention).
    """
    if ipo_per_token:
        h = (policy_chosen_logps - reference_chosen_logps) / chosen_lengths - (
            policy_rejected_logps - reference_rejected_logps
        ) / rejected_lengths
    else:
        h = log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return (h - 1 / (2 * beta)) ** 2


def slic(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
         reference_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float,
         slic_delta: float = 1.0, **_) -> Tensor:
    """SLiC hinge on the implicit reward margin: ``max(0, delta - beta h)`` (TRL ``hinge`` with delta = 1)."""
    h = log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return torch.relu(slic_delta - beta * h)


def simpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
          reference_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float,
          simpo_gamma: float = 0.5, **_) -> Tensor:
    """SimPO (Meng et al. 2024), reference-free:
    ``-log sigmoid(beta (log pi(y_w|x)/|y_w| - log pi(y_l|x)/|y_l|) - gamma)``.
    Paper defaults beta = 2.0, gamma = 0.5. The reference log-probs are ignored (may be NaN)."""
    return -F.logsigmoid(beta * (policy_chosen_logps / chosen_lengths - policy_rejected_logps / rejected_lengths) - simpo_gamma)


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[..., Tensor]
    needs_reference: bool  # False: reference log-probs are ignored (and may be NaN)


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo, True),
    "cdpo": LossSpec(cdpo, True),
    "rdpo": LossSpec(rdpo, True),
    "ipo": LossSpec(ipo, True),
    "slic": LossSpec(slic, True),
    "simpo": LossSpec(simpo, False),
}


def implicit_margin(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
                    reference_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *,
                    loss: str, beta: float) -> Tensor:
    """The reward margin r(y_w) - r(y_l) the loss pushes up [B]: ``beta * h``, or SimPO's
    length-normalised ``beta (log pi(y_w|x)/|y_w| - log pi(y_l|x)/|y_l|)``."""
    if loss == "simpo":
        return beta * (policy_chosen_logps / chosen_lengths - policy_rejected_logps / rejected_lengths)
    return beta * log_ratio_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)

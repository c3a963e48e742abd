"""Direct alignment losses as pure functions of per-sequence log-probs.

Every loss takes tensors of shape [B] (one entry per preference pair)::

    pc, pr   log pi(y_w|x), log pi(y_l|x)         policy, summed over response tokens
    rc, rr   log ref(y_w|x), log ref(y_l|x)       reference (ignored by SimPO)
    lc, lr   |y_w|, |y_l|                         response token counts

and returns the per-pair loss [B]; the trainer averages it. With
``h = (pc - rc) - (pr - rr)`` (the implicit reward margin divided by beta):

======  ==========================================================  ========================
name    loss per pair                                               paper
======  ==========================================================  ========================
dpo     -log sigmoid(beta h)                                         Rafailov et al. 2023
cdpo    -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)      conservative DPO
rdpo    [-(1-eps) log s(beta h) + eps log s(-beta h)] / (1-2 eps)    Chowdhury et al. 2024
ipo     (h - 1/(2 beta))^2                                           Azar et al. 2023
slic    max(0, delta - beta h)                                       Zhao et al. 2023 (SeRA eq. 8)
simpo   -log sigmoid(beta (pc/lc - pr/lr) - gamma)                   Meng et al. 2024
======  ==========================================================  ========================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def dpo(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, lc: Tensor, lr: Tensor, *, beta: float, **_) -> Tensor:
    """DPO: ``-log sigmoid(beta * h)``; equals log 2 at h = 0."""
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


def cdpo(pc, pr, rc, rr, lc, lr, *, beta: float, label_smoothing: float = 0.0, **_) -> Tensor:
    """Conservative DPO: labels flipped with probability eps,
    ``-(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``; eps = 0 is DPO."""
    z = beta * ((pc - rc) - (pr - rr))
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def rdpo(pc, pr, rc, rr, lc, lr, *, beta: float, label_smoothing: float = 0.0, **_) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024), an unbiased loss under label-flip rate eps < 0.5:
    ``[-(1-eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)``; eps = 0 is DPO."""
    z = beta * ((pc - rc) - (pr - rr))
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def ipo(pc, pr, rc, rr, lc, lr, *, beta: float, ipo_per_token: bool = False, **_) -> Tensor:
    """IPO (Azar et al. 2023): ``(h - 1/(2 beta))^2``.

    h uses summed log-probs by default; ``ipo_per_token=True`` uses per-token means
    ``(pc - rc)/lc - (pr - rr)/lr`` (TRL's ``loss_type="ipo"`` convention).
    """
    if ipo_per_token:
        h = (pc - rc) / lc - (pr - rr) / lr
    else:
        h = (pc - rc) - (pr - rr)
    return (h - 1 / (2 * beta)) ** 2


def slic(pc, pr, rc, rr, lc, lr, *, beta: float, slic_delta: float = 1.0, **_) -> Tensor:
    """SLiC hinge on the implicit reward margin: ``max(0, delta - beta h)`` (TRL ``hinge`` with delta = 1)."""
    return torch.relu(slic_delta - beta * ((pc - rc) - (pr - rr)))


def simpo(pc, pr, rc, rr, lc, lr, *, beta: float, simpo_gamma: float = 0.5, **_) -> Tensor:
    """SimPO (Meng et al. 2024), reference-free: ``-log sigmoid(beta (pc/lc - pr/lr) - gamma)``.
    Paper defaults beta = 2.0, gamma = 0.5. ``rc`` and ``rr`` are ignored (may be NaN)."""
    return -F.logsigmoid(beta * (pc / lc - pr / lr) - simpo_gamma)


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


def implicit_margin(pc, pr, rc, rr, lc, lr, *, loss: str, beta: float) -> Tensor:
    """The reward margin r(y_w) - r(y_l) the loss pushes up: beta*h, or SimPO's length-normalised one."""
    if loss == "simpo":
        return beta * (pc / lc - pr / lr)
    return beta * ((pc - rc) - (pr - rr))

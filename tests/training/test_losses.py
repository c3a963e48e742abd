"""Properties every preference loss must have (ALGORITHMS.md, "Checks every loss must pass")."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iterdpo.training.losses import LOSSES, implicit_margin

finite = st.floats(min_value=-50, max_value=50, allow_nan=False)
betas = st.floats(min_value=0.01, max_value=5.0)
lengths = st.integers(min_value=1, max_value=200)
OPTS = dict(label_smoothing=0.0, ipo_per_token=False, slic_delta=1.0, simpo_gamma=0.5)


def T(*xs):
    return [torch.tensor([float(x)], dtype=torch.float64) for x in xs]


def loss_at_h(name: str, h: float, beta: float, **kw) -> float:
    """Loss with the policy's chosen log-prob moved by h (so the IRM/beta is h), other terms fixed."""
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths = T(-10.0 + h, -10.0, -10.0, -10.0, 1, 1)
    return float(LOSSES[name].fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths, beta=beta, **{**OPTS, **kw}))


@given(beta=betas, policy_chosen_logps=finite, reference_chosen_logps=finite, chosen_lengths=lengths)
def test_dpo_at_zero_margin_is_log2(beta, policy_chosen_logps, reference_chosen_logps, chosen_lengths):
    # h = 0 whenever chosen and rejected have the same log-ratio
    args = T(policy_chosen_logps, policy_chosen_logps, reference_chosen_logps, reference_chosen_logps, chosen_lengths, chosen_lengths + 3)
    assert float(LOSSES["dpo"].fn(*args, beta=beta)) == pytest.approx(math.log(2), abs=1e-12)


@pytest.mark.parametrize("name", ["dpo", "cdpo", "rdpo", "slic", "simpo"])
@given(beta=betas, h1=finite, dh=st.floats(min_value=1e-3, max_value=20), eps=st.floats(min_value=0.0, max_value=0.45))
@settings(max_examples=60)
def test_loss_does_not_increase_with_margin(name, beta, h1, dh, eps):
    kw = {"label_smoothing": eps if name == "rdpo" else min(eps, 0.49)}
    if name == "cdpo":
        # cDPO is minimised at a finite margin (label smoothing); below it, it decreases in h
        kw["label_smoothing"] = 0.0
    a, b = loss_at_h(name, h1, beta, **kw), loss_at_h(name, h1 + dh, beta, **kw)
    assert b <= a + 1e-9


@given(beta=betas, h1=finite, dh=st.floats(min_value=1e-3, max_value=20), eps=st.floats(min_value=0.01, max_value=0.45))
def test_cdpo_decreases_up_to_its_optimum(beta, h1, dh, eps):
    # d/dz [-(1-e) log s(z) - e log s(-z)] = s(z) - (1-e): minimum at z* = log((1-e)/e)
    z_star = math.log((1 - eps) / eps) / beta
    lo, hi = min(h1, z_star - dh), z_star
    if hi - lo < 1e-6:
        return
    a = loss_at_h("cdpo", lo, beta, label_smoothing=eps)
    b = loss_at_h("cdpo", (lo + hi) / 2, beta, label_smoothing=eps)
    assert b <= a + 1e-9


@given(beta=betas, h=finite)
def test_ipo_decreases_toward_its_target(beta, h):
    target = 1 / (2 * beta)
    assert loss_at_h("ipo", target, beta) == pytest.approx(0.0, abs=1e-9)
    # moving h toward 1/(2 beta), from either side, lowers the loss
    assert loss_at_h("ipo", (h + target) / 2, beta) <= loss_at_h("ipo", h, beta) + 1e-9
    if h < target:  # below the target (the usual start, h = 0) it decreases as h grows
        assert loss_at_h("ipo", min(h + 0.1, target), beta) <= loss_at_h("ipo", h, beta) + 1e-9


@given(beta=betas, policy_chosen_logps=finite, policy_rejected_logps=finite, reference_chosen_logps=finite, reference_rejected_logps=finite, chosen_lengths=lengths, rejected_lengths=lengths, gamma=st.floats(0, 2))
def test_simpo_ignores_reference(beta, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths, gamma):
    a = LOSSES["simpo"].fn(*T(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths), beta=beta, simpo_gamma=gamma)
    b = LOSSES["simpo"].fn(*T(policy_chosen_logps, policy_rejected_logps, math.nan, math.nan, chosen_lengths, rejected_lengths), beta=beta, simpo_gamma=gamma)
    assert float(a) == float(b)
    assert not LOSSES["simpo"].needs_reference


@pytest.mark.parametrize("name", ["cdpo", "rdpo"])
@given(beta=betas, policy_chosen_logps=finite, policy_rejected_logps=finite, reference_chosen_logps=finite, reference_rejected_logps=finite)
def test_smoothing_zero_is_dpo(name, beta, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
    args = T(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, 1, 1)
    want = LOSSES["dpo"].fn(*args, beta=beta)
    got = LOSSES[name].fn(*args, beta=beta, label_smoothing=0.0)
    assert float(got) == pytest.approx(float(want), rel=1e-12, abs=1e-12)


@given(beta=betas, policy_chosen_logps=finite, policy_rejected_logps=finite, reference_chosen_logps=finite, reference_rejected_logps=finite, chosen_lengths=lengths, rejected_lengths=lengths)
def test_ipo_per_token_uses_means(beta, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths):
    got = LOSSES["ipo"].fn(*T(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths), beta=beta, ipo_per_token=True)
    h = (policy_chosen_logps - reference_chosen_logps) / chosen_lengths - (policy_rejected_logps - reference_rejected_logps) / rejected_lengths
    assert float(got) == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-9, abs=1e-9)


def test_every_loss_has_a_formula_docstring_and_batches():
    B = 5
    g = torch.Generator().manual_seed(0)
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps = (torch.randn(B, generator=g) * 5 - 20 for _ in range(4))
    chosen_lengths = rejected_lengths = torch.full((B,), 7.0)
    for name, spec in LOSSES.items():
        assert spec.fn.__doc__ and ("log" in spec.fn.__doc__ or "max" in spec.fn.__doc__), name
        out = spec.fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths, beta=0.1, **OPTS)
        assert out.shape == (B,) and torch.isfinite(out).all(), name


def test_implicit_margin():
    policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths = T(-5, -9, -6, -7, 2, 4)
    assert float(implicit_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths, loss="dpo", beta=0.5)) == pytest.approx(0.5 * ((1) - (-2)))
    assert float(implicit_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, chosen_lengths, rejected_lengths, loss="simpo", beta=2.0)) == pytest.approx(2.0 * (-2.5 + 2.25))

"""Student-t quantiles, paired intervals and detectable effects against known values."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iterdpo.stats import betainc, detectable_effect, holm, paired_interval, t_cdf, t_quantile

# two-sided 95 % critical values of Student's t (any statistics table)
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 10: 2.2281, 30: 2.0423, 120: 1.9799}


@pytest.mark.parametrize("df,value", sorted(T_975.items()))
def test_t_quantile_matches_the_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-value, abs=1e-4)


def test_t_limits_and_symmetry():
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)  # the normal quantile
    assert t_quantile(0.8, 3) == pytest.approx(0.9785, abs=1e-4)  # one-sided 80 % (power lines)
    assert t_cdf(0.0, 7) == pytest.approx(0.5)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-4)  # I_0.4(2, 3) = 1 - (0.6^4 + 4*0.4*0.6^3)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.01, 0.99), st.integers(1, 200))
def test_t_quantile_inverts_the_cdf(p, df):
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)


def test_paired_interval_known_example():
    # differences 1, 2, 3, 4: mean 2.5, sd 1.2910, se 0.6455, t_{0.975,3} 3.1824
    res = paired_interval([2, 4, 6, 8], [1, 2, 3, 4])
    assert res.mean == pytest.approx(2.5)
    assert res.sd == pytest.approx(1.290994, abs=1e-6)
    assert (res.low, res.high) == (pytest.approx(2.5 - 2.054, abs=1e-3), pytest.approx(2.5 + 2.054, abs=1e-3))
    assert res.p_value == pytest.approx(0.0300, abs=1e-3)  # t = 3.873 on 3 df
    fields = res.as_dict("gain")
    assert fields["gain_n"] == 4 and fields["gain_ci95"][0] < 2.5 < fields["gain_ci95"][1]


def test_paired_interval_degenerate_inputs():
    assert paired_interval([], []).n == 0
    one = paired_interval([1.0], [0.0])
    assert one.mean == 1.0 and math.isnan(one.low)
    same = paired_interval([1.0, 2.0], [0.0, 1.0])  # every difference 1: a point interval
    assert (same.low, same.high, same.p_value) == (1.0, 1.0, 0.0)
    assert paired_interval([1.0, float("nan"), 3.0], [0.0, 0.0, 1.0]).n == 2  # non-finite pairs dropped
    with pytest.raises(ValueError):
        paired_interval([1.0], [1.0, 2.0])
    assert math.isnan(detectable_effect(1.0, 1))


def test_interval_coverage_is_nominal():
    """Over 2000 simulated normal samples of 6 pairs, the 95 % interval covers the true mean ~95 % of the time."""
    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        x = [rng.gauss(0.3, 1.0) for _ in range(6)]
        res = paired_interval(x, [0.0] * 6)
        hits += res.low <= 0.3 <= res.high
    assert 0.935 <= hits / 2000 <= 0.965  # binomial SD of the rate is 0.005


def test_detectable_effect_is_the_power_formula():
    # (t_{0.975,9} + t_{0.8,9}) * sd / sqrt(10) = (2.2622 + 0.8834) * 0.5 / 3.1623
    assert detectable_effect(0.5, 10) == pytest.approx((2.2622 + 0.8834) * 0.5 / math.sqrt(10), abs=1e-3)
    assert detectable_effect(0.5, 40) < detectable_effect(0.5, 10)  # more pairs, smaller effects


def test_holm_known_example():
    # m = 4: sorted p 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (monotone), 0.06... capped at 1
    assert holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12))
def test_holm_is_monotone_bounded_and_never_below_the_raw_p(ps):
    adj = holm(ps)
    assert all(a >= p - 1e-12 and a <= 1.0 for a, p in zip(adj, ps))
    by_p = sorted(range(len(ps)), key=lambda i: ps[i])
    assert all(adj[by_p[i]] <= adj[by_p[i + 1]] + 1e-12 for i in range(len(ps) - 1))

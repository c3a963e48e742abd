"""Budget schedules over iterations (Yang et al.) and their config form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iterdpo.config import ConfigError, load_config
from iterdpo.selection.budget import budget_schedule


def test_paper_schedules():
    assert budget_schedule("increase", 30000, 3) == [5000, 10000, 15000]
    assert budget_schedule("constant", 30000, 3) == [10000, 10000, 10000]
    assert budget_schedule("decrease", 30000, 3) == [15000, 10000, 5000]
    assert budget_schedule([3, 1, 2]) == [3, 1, 2]


@given(st.sampled_from(["increase", "constant", "decrease"]), st.integers(1, 10), st.integers(0, 10**6))
def test_sums_to_total_and_is_monotone(schedule, iterations, extra):
    total = iterations + extra
    counts = budget_schedule(schedule, total, iterations)
    assert len(counts) == iterations and sum(counts) == total and min(counts) >= 1
    diffs = [b - a for a, b in zip(counts, counts[1:], strict=False)]
    if schedule == "increase":
        assert all(d >= 0 for d in diffs)
    elif schedule == "decrease":
        assert all(d <= 0 for d in diffs)
    else:
        assert max(counts) - min(counts) <= 1


def test_bad_schedules():
    with pytest.raises(ValueError, match="one of"):
        budget_schedule("upwards", 10, 2)
    with pytest.raises(ValueError, match="smaller than"):
        budget_schedule("constant", 2, 3)
    with pytest.raises(ValueError, match=">= 1"):
        budget_schedule([2, 0])


def test_config_budget_form():
    cfg = load_config(None, ["data.prompts_per_iteration={schedule: decrease, total: 60}"])
    assert [cfg.prompts_for(k) for k in (1, 2, 3)] == [30, 20, 10]
    assert load_config(None, ["data.prompts_per_iteration=[4, 5, 6]"]).prompts_for(2) == 5
    with pytest.raises(ConfigError, match="data.prompts_per_iteration.*total"):
        load_config(None, ["data.prompts_per_iteration={schedule: decrease, total: 2}"])

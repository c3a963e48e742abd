"""Label noise: a seeded, exact, nested fraction of pairs swapped, recorded in stats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iterdpo.annotation import annotate, attach_logps
from iterdpo.annotation.gold import GoldAnnotator
from iterdpo.annotation.noise import swap_indices


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 500), f=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_swaps_exactly_round_fraction_distinct_indices(n, f, seed):
    idx = swap_indices(n, f, seed)
    assert len(idx) == round(f * n)
    assert idx == sorted(set(idx))
    assert all(0 <= i < n for i in idx)
    assert swap_indices(n, f, seed) == idx  # deterministic


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 300), f1=st.floats(0, 1), f2=st.floats(0, 1), seed=st.integers(0, 1000))
def test_noise_levels_are_nested(n, f1, f2, seed):
    lo, hi = sorted((f1, f2))
    assert set(swap_indices(n, lo, seed)) <= set(swap_indices(n, hi, seed))


def test_seeds_differ_and_bad_fractions_are_refused():
    assert swap_indices(1000, 0.2, 0) != swap_indices(1000, 0.2, 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        swap_indices(10, 1.5, 0)


def test_annotate_swaps_the_chosen_pairs_and_records_them(scored, candidates):
    kw = dict(ties="drop", iteration=1, seed=7)
    clean, s0 = annotate(candidates, scored, GoldAnnotator(), **kw)
    noisy, s1 = annotate(candidates, scored, GoldAnnotator(), noise=0.4, **kw)
    assert "noise_swapped" not in s0
    assert s1["noise_fraction"] == 0.4 and s1["noise_swapped"] == round(0.4 * clean.num_rows)
    c, n = clean.to_pylist(), noisy.to_pylist()
    flipped = [[b["chosen_id"], b["rejected_id"]] for a, b in zip(c, n, strict=True) if a["chosen_id"] != b["chosen_id"]]
    assert flipped == s1["noise_swapped_pairs"]
    c = attach_logps(clean, scored, ref_column="ref_logp", start_column="policy_logp").to_pylist()
    n = attach_logps(noisy, scored, ref_column="ref_logp", start_column="policy_logp").to_pylist()
    for a, b in zip(c, n, strict=True):  # a swapped pair swaps its log-probs too
        if a["chosen_id"] != b["chosen_id"]:
            assert (a["chosen"], a["ref_chosen_logps"]) == (b["rejected"], b["ref_rejected_logps"])

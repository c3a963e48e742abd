"""Shared selector machinery: seeded keys, canonical pairs, ranking."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from iterdpo.selection import base


def test_keys_depend_on_ids_and_seed_only():
    h = base.id_hashes(["a", "b", "c"])
    assert np.array_equal(base.id_hashes(["c", "a"]), h[[2, 0]])
    k0, k1 = base.pair_keys(h[:2], h[1:], 0), base.pair_keys(h[:2], h[1:], 1)
    assert not np.array_equal(k0, k1)
    assert np.array_equal(base.pair_keys(h[[1]], h[[2]], 0), k0[[1]])
    u = base.uniform(k0)
    assert ((u > 0) & (u < 1)).all()


@given(st.lists(st.integers(1, 6), min_size=0, max_size=12))
def test_within_group_pairs_are_all_pairs(sizes):
    groups = np.repeat(np.arange(len(sizes)), sizes)
    a, b = base.within_group_pairs(groups)
    expected = [(i, j) for i in range(len(groups)) for j in range(i + 1, len(groups)) if groups[i] == groups[j]]
    assert list(zip(a.tolist(), b.tolist(), strict=True)) == expected


@given(st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=1, max_size=30), st.integers(0, 9))
def test_rank_orders_by_value_then_key(values, seed):
    v = np.array(values)
    keys = base.row_keys(base.id_hashes([str(i) for i in range(len(v))]), seed)
    order = base.rank(v, keys, "smallest")
    assert sorted(order.tolist()) == list(range(len(v)))
    pairs = list(zip(v[order], keys[order], strict=True))
    assert pairs == sorted(pairs)
    assert np.all(np.diff(v[base.rank(v, keys, "largest")]) <= 0)

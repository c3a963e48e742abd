"""Active preference learning (Muldrew et al.): entropy, certainty, hybrid."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selection_strategies import same, scored_tables, shuffled

from iterdpo import records
from iterdpo.selection import apl


def buggy_entropy(all_hs: np.ndarray, n: int) -> np.ndarray:
    """The authors' public code: averages all_hs[s:s+n] (a window overlapping later prompts)."""
    return np.array([-np.mean(all_hs[s : s + n]) for s in range(len(all_hs) // n)])


def test_entropy_slices_per_prompt_block_not_the_buggy_window():
    n = 4
    # prompt 0 is confident (logp ~ -1), prompt 1 uncertain (~ -50), prompt 2 in between (~ -10)
    logps = np.concatenate([np.full(n, -1.0), np.full(n, -50.0), np.full(n, -10.0)])
    h = apl.prompt_entropy(logps, n)
    assert h.tolist() == [1.0, 50.0, 10.0]
    assert not np.allclose(h, buggy_entropy(logps, n))  # the bug would mix prompts 0-2
    assert np.argmax(h) == 1 and np.argmax(buggy_entropy(logps, n)) != 1
    with pytest.raises(ValueError):
        apl.prompt_entropy(logps[:-1], n)


def _table(logps: list[list[float]], rewards: list[list[float]] | None = None) -> pa.Table:
    rows = []
    for i, lps in enumerate(logps):
        for k, lp in enumerate(lps):
            r = rewards[i][k] if rewards else 0.0
            rows.append(dict(prompt_id=f"p{i:02d}", completion_id=f"p{i:02d}-{k:04d}", prompt="q", completion=f"t{k}", num_tokens=2,
                             finish_reason="stop", policy_logp=lp, ref_logp=0.0, reward=r, reward_norm=r / 2, reward_simpo=lp / 2))
    return records.from_rows(rows, records.SCORED)


def test_select_entropy_through_the_table_picks_uncertain_prompts():
    t = _table([[-1.0] * 8, [-50.0] * 8, [-10.0] * 8, [-2.0] * 8])
    rev = shuffled(t, list(range(t.num_rows))[::-1])
    out = apl.select_entropy(rev, count=2)
    assert out.column("prompt_id").to_pylist() == ["p01", "p02"]
    assert out.column("score").to_pylist() == [50.0, 10.0]
    tok = apl.select_entropy(t, count=1, per_token=True)
    assert tok.column("score").to_pylist() == [25.0]


@settings(max_examples=40, deadline=None)
@given(scored_tables(), st.randoms(use_true_random=False))
def test_entropy_by_prompt_is_the_per_prompt_mean(table, rnd):
    perm = list(range(table.num_rows))
    rnd.shuffle(perm)
    pids, h = apl.entropy_by_prompt(shuffled(table, perm))
    rows = table.to_pylist()
    for pid, value in zip(pids.to_pylist(), h, strict=True):
        lps = [r["policy_logp"] for r in rows if r["prompt_id"] == pid]
        assert value == pytest.approx(-sum(lps) / len(lps))


@settings(max_examples=50, deadline=None)
@given(scored_tables(), st.integers(0, 10), st.integers(0, 3), st.randoms(use_true_random=False))
def test_certainty_largest_first_pair_order_independent(table, count, seed, rnd):
    out = apl.select_certainty(table, count=count, seed=seed)
    by = {}
    for r in table.to_pylist():
        by.setdefault(r["prompt_id"], []).append(r)
    first = {}
    for pid, rs in by.items():
        rs.sort(key=lambda r: r["completion_id"])
        ps = [(a, b) for i, a in enumerate(rs) for b in rs[i + 1 :] if a["completion"] != b["completion"]]
        if ps:
            a, b = ps[0]
            first[pid] = (a["completion_id"], b["completion_id"], abs(a["reward"] - b["reward"]))
    assert out.num_rows == min(count, len(first))
    for r in out.to_pylist():
        assert first[r["prompt_id"]] == (r["a_id"], r["b_id"], r["margin"])
    assert sorted(out.column("margin").to_pylist()) == sorted(sorted((m for *_, m in first.values()), reverse=True)[: out.num_rows])
    perm = list(range(table.num_rows))
    rnd.shuffle(perm)
    assert same(out, apl.select_certainty(shuffled(table, perm), count=count, seed=seed))


def test_first_acquisition_ties_are_seeded_random_not_list_order():
    t = _table([[-1.0, -2.0]] * 40)  # policy == reference: every margin is 0
    picks = [apl.select_certainty(t, count=5, seed=s).column("prompt_id").to_pylist() for s in range(5)]
    assert len({tuple(p) for p in picks}) > 1
    assert picks[0] != [f"p{i:02d}" for i in range(5)] or picks[1] != [f"p{i:02d}" for i in range(5)]


def test_hybrid_pairs_come_from_the_high_entropy_prompts():
    ent = _table([[-float(i)] * 8 for i in range(12)])  # entropy of p_i is i
    pairs = _table([[-1.0, -1.0]] * 12, rewards=[[0.0, float(12 - i)] for i in range(12)])  # certainty falls with i
    out = apl.select_hybrid(ent, pairs, s=4, m=2)
    assert out.num_rows == 2
    assert set(out.column("prompt_id").to_pylist()) == {"p08", "p09"}  # top-4 entropy = p08..p11; most certain of them
    assert out.column("selector")[0].as_py().startswith("apl:hybrid")


def test_draw_prompts_is_seeded_and_order_free():
    t = pa.table({"prompt_id": [f"p{i}" for i in range(50)], "prompt": ["x"] * 50})
    a = apl.draw_prompts(t, 10, seed=1)
    b = apl.draw_prompts(t.take(pa.array(list(range(50))[::-1])), 10, seed=1)
    assert same(a, b)
    assert a.num_rows == 10 and a.column("prompt_id").to_pylist() != apl.draw_prompts(t, 10, seed=2).column("prompt_id").to_pylist()

"""SeRA (Ko et al.): off-policy selection, bootstrapping, ensemble, iteration-1 rule."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selection_strategies import same, scored_tables, shuffled

from iterdpo import records
from iterdpo.selection import sera


@st.composite
def offline_sets(draw):
    """(pairs, scored): offline labelled pairs (chosen_id, rejected_id) and their scored responses."""
    scored = draw(scored_tables(max_prompts=8, min_n=2, max_n=4))
    prev = [draw(st.sampled_from([-1.0, 0.0, 0.5, 3.0])) for _ in range(scored.num_rows)]
    prev = pa.array(prev, pa.float64())
    i = scored.schema.get_field_index("prev_reward")
    scored = scored.set_column(i, "prev_reward", prev) if i >= 0 else scored.append_column("prev_reward", prev)
    rows = scored.to_pylist()
    pairs = []
    for pid in dict.fromkeys(r["prompt_id"] for r in rows):
        rs = [r for r in rows if r["prompt_id"] == pid]
        flip = draw(st.booleans())  # labels may disagree with the rewards (noisy labels)
        a, b = (rs[1], rs[0]) if flip else (rs[0], rs[1])
        pairs.append({"prompt_id": pid, "chosen_id": a["completion_id"], "rejected_id": b["completion_id"]})
    return pa.Table.from_pylist(pairs), scored


def oriented(pairs, scored, lam):
    r = {x["completion_id"]: (1 - lam) * x["reward"] + lam * x["prev_reward"] for x in scored.to_pylist()}
    return {(p["chosen_id"], p["rejected_id"]): r[p["chosen_id"]] - r[p["rejected_id"]] for p in pairs.to_pylist()}


@settings(max_examples=50, deadline=None)
@given(offline_sets(), st.integers(0, 10), st.sampled_from([0.0, 0.3, 1.0]), st.integers(0, 3), st.randoms(use_true_random=False))
def test_offline_topk_exact_subset_order_independent(data, k1, lam, seed, rnd):
    pairs, scored = data
    out = sera.select_offline(pairs, scored, k1=k1, lam=lam, seed=seed)
    m = oriented(pairs, scored, lam)
    assert out.num_rows == min(k1, pairs.num_rows)
    got = {(r["chosen_id"], r["rejected_id"]): r["margin"] for r in out.to_pylist()}
    assert all(k in m and v == pytest.approx(m[k]) for k, v in got.items())  # subset, oriented margins
    assert sorted(got.values()) == pytest.approx(sorted(m.values(), reverse=True)[: out.num_rows][::-1])  # the largest
    perm = list(range(pairs.num_rows))
    rnd.shuffle(perm)
    sperm = list(range(scored.num_rows))
    rnd.shuffle(sperm)
    assert same(out, sera.select_offline(shuffled(pairs, perm), shuffled(scored, sperm), k1=k1, lam=lam, seed=seed))


def test_negative_margin_pairs_go_first_and_pair_columns_work():
    pairs = pa.table({"prompt_id": ["p1", "p2", "p3"], "chosen_id": ["a", "c", "e"], "rejected_id": ["b", "d", "f"],
                      "chosen_reward": [1.0, -2.0, 0.5], "rejected_reward": [0.0, 0.0, 0.0]})
    assert sera.select_offline(pairs, k1_fraction=0.7).num_rows == 3  # ceil(0.7 * 3)
    out = sera.select_offline(pairs, k1=2)
    assert out.column("chosen_id").to_pylist() == ["a", "e"]  # the noisy (negative IRM) pair is dropped
    assert out.column("margin").to_pylist() == [1.0, 0.5]


def test_ensemble_and_lambda_rule():
    cur, prev = np.array([1.0, 2.0]), np.array([3.0, -2.0])
    assert np.allclose(sera.ensemble(cur, prev, 0.25), 0.75 * cur + 0.25 * prev)
    assert np.array_equal(sera.ensemble(cur, None, 0.25), cur)  # one aligned model: lambda = 0
    assert sera.effective_lambda(0.3, 2) == 0.0 and sera.effective_lambda(0.3, 3) == 0.3
    with pytest.raises(ValueError):
        sera.ensemble(cur, prev, 1.5)
    pairs = pa.table({"prompt_id": ["p"], "chosen_id": ["a"], "rejected_id": ["b"]})
    scored = pa.table({"completion_id": ["a", "b"], "reward": [1.0, 0.0]})
    assert sera.select_sera(2, pairs, scored, lam=0.5).num_rows == 1  # t=2: no prev_reward needed
    with pytest.raises(records.RecordError, match="prev_reward"):
        sera.select_sera(3, pairs, scored, lam=0.5)
    with pytest.raises(records.RecordError, match=r"row 0, field 'chosen_id': 'a'"):
        sera.select_offline(pairs, pa.table({"completion_id": ["b"], "reward": [0.0]}))


def test_iteration_one_takes_all_offline_data():
    pairs = pa.table({"prompt_id": ["p2", "p1"], "chosen_id": ["c", "a"], "rejected_id": ["d", "b"]})
    out = sera.select_sera(1, pairs)
    assert out.num_rows == 2 and out.column("margin").to_pylist() == [0.0, 0.0]
    assert set(out.column("source").to_pylist()) == {"offline"}


@settings(max_examples=50, deadline=None)
@given(scored_tables(max_prompts=8, max_n=5), st.integers(0, 10), st.sampled_from(["dpo", "simpo"]), st.integers(0, 3), st.randoms(use_true_random=False))
def test_bootstrap_argmax_argmin_topk(scored, k2, loss, seed, rnd):
    col = "reward_simpo" if loss == "simpo" else "reward"
    out = sera.select_bootstrap(scored, k2=k2, loss=loss, seed=seed)
    rows = scored.to_pylist()
    by = {}
    for r in rows:
        by.setdefault(r["prompt_id"], []).append(r)
    valid = {p: rs for p, rs in by.items() if len({r["completion"] for r in rs}) > 1}
    assert out.num_rows == min(k2, len(valid))
    ids = {r["completion_id"]: r for r in rows}
    for r in out.to_pylist():
        c, j = ids[r["chosen_id"]], ids[r["rejected_id"]]
        assert c["prompt_id"] == j["prompt_id"] == r["prompt_id"]  # no cross-prompt pairs
        assert c["completion"] != j["completion"]
        group = by[r["prompt_id"]]
        assert c[col] == max(x[col] for x in group)  # chosen = argmax
        assert j[col] == min(x[col] for x in group if x["completion"] != c["completion"])  # rejected = argmin
        assert r["margin"] == c[col] - j[col] >= 0
    perm = list(range(scored.num_rows))
    rnd.shuffle(perm)
    assert same(out, sera.select_bootstrap(shuffled(scored, perm), k2=k2, loss=loss, seed=seed))


def test_bootstrap_keeps_largest_margin_prompts_and_sera_combines():
    rows = []
    for i, spread in enumerate([0.1, 3.0, 1.0, 2.0]):
        for k, r in enumerate([0.0, spread, spread / 2, 0.0]):
            rows.append(dict(prompt_id=f"p{i}", completion_id=f"p{i}-{k}", prompt="q", completion=f"t{k}", num_tokens=1, finish_reason="stop",
                             policy_logp=0.0, ref_logp=0.0, reward=r, reward_norm=r, reward_simpo=r))
    samples = records.from_rows(rows, records.SCORED)
    out = sera.select_bootstrap(samples, k2=2)
    assert sorted(out.column("prompt_id").to_pylist()) == ["p1", "p3"]
    pairs = pa.table({"prompt_id": [f"p{i}" for i in range(10)], "chosen_id": [f"c{i}" for i in range(10)], "rejected_id": [f"r{i}" for i in range(10)],
                      "chosen_reward": [float(i) for i in range(10)], "rejected_reward": [5.0] * 10})
    both = sera.select_sera(2, pairs, samples=samples)  # k1 = 7 offline, k2 = 3 bootstrapped
    assert both.column("source").to_pylist().count("offline") == 7
    assert both.column("source").to_pylist().count("bootstrap") == 3

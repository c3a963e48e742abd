"""Streaming selection: the same rows as the in-memory path, bounded held state, clear errors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selection_strategies import same, scored_tables, shuffled
from test_sera import offline_sets

from iterdpo import records
from iterdpo.selection import apl, sera, stream
from iterdpo.selection.margin import select_margin, stream_margin

ORDERS = ["smallest", "largest", "random"]


def prompt_order_perm(table: pa.Table, rnd) -> list[int]:
    """A row permutation that shuffles prompts and the rows inside each prompt but keeps
    every prompt's rows together (the layout sampling and scoring write)."""
    by: dict[str, list[int]] = {}
    for i, pid in enumerate(table.column("prompt_id").to_pylist()):
        by.setdefault(pid, []).append(i)
    blocks = list(by.values())
    rnd.shuffle(blocks)
    for b in blocks:
        rnd.shuffle(b)
    return [i for b in blocks for i in b]


def split(table: pa.Table, cuts: list[int]) -> pa.RecordBatchReader:
    """A one-pass reader of ``table`` cut at random sizes (``cuts`` cycled)."""
    batches, at, i = [], 0, 0
    while at < table.num_rows:
        n = cuts[i % len(cuts)]
        batches.extend(table.slice(at, n).to_batches())
        at, i = at + n, i + 1
    return pa.RecordBatchReader.from_batches(table.schema, batches)


cut_lists = st.lists(st.integers(1, 9), min_size=1, max_size=6)


@settings(max_examples=80, deadline=None)
@given(scored_tables(max_prompts=10), st.sampled_from(ORDERS), st.sampled_from(ORDERS), st.floats(0.0, 1.0),
       st.one_of(st.none(), st.integers(0, 12)), st.sampled_from(["sum", "length"]), st.integers(0, 3), cut_lists,
       st.randoms(use_true_random=False))
def test_margin_stream_equals_in_memory(table, instance, corpus, frac, count, margin, seed, cuts, rnd):
    kw = dict(instance=instance, corpus=corpus, corpus_fraction=frac, corpus_count=count, margin=margin, seed=seed)
    ref = select_margin(table, **kw)
    t = shuffled(table, prompt_order_perm(table, rnd))
    assert same(ref, select_margin(split(t, cuts), **kw))  # one-pass reader: heap of one pick per prompt
    assert same(ref, stream_margin(t, batch_size=cuts[0], **kw))  # re-readable: heap capped by the prompt count


def test_margin_stream_from_parquet_file_and_folder(tmp_path):
    rows = [dict(prompt_id=f"p{(i * 37) % 101:03d}", completion_id=f"p{(i * 37) % 101:03d}-{k}", prompt="q", completion=f"t{(i + k) % 3}",
                 num_tokens=1, finish_reason="stop", policy_logp=0.0, ref_logp=0.0, reward=float((i * 7 + k * 3) % 5),
                 reward_norm=0.0, reward_simpo=0.0) for i in range(101) for k in (3, 0, 2, 1)]
    t = records.from_rows(rows, records.SCORED)  # prompts not sorted, rows inside a prompt not sorted
    ref = select_margin(t, corpus_fraction=0.3)
    pq.write_table(t, tmp_path / "scored.parquet", row_group_size=50)
    for bs in (1, 3, 4, 7, 1000):
        assert same(ref, select_margin(tmp_path / "scored.parquet", corpus_fraction=0.3, batch_size=bs))
    (tmp_path / "parts").mkdir()
    pq.write_table(t.slice(0, 202), tmp_path / "parts" / "a.parquet")  # a prompt split across the two files
    pq.write_table(t.slice(202), tmp_path / "parts" / "b.parquet")
    assert same(ref, select_margin(tmp_path / "parts", corpus_fraction=0.3, batch_size=5))


@settings(max_examples=40, deadline=None)
@given(scored_tables(max_prompts=12, max_n=6), st.integers(1, 7), st.sampled_from(ORDERS), st.one_of(st.none(), st.integers(0, 4)))
def test_held_state_is_one_batch_plus_one_prompt_plus_heap(table, batch, corpus, count):
    """Structural memory bound: the chunker never holds more than a batch and one prompt's
    rows, and the heap never more than twice its cap plus one chunk's picks."""
    probe: dict = {}
    stream_margin(table, corpus=corpus, corpus_fraction=0.5, corpus_count=count, batch_size=batch, probe=probe)
    assert probe["rows"] == table.num_rows
    assert probe["max_batch_rows"] <= batch
    assert probe["max_rows_held"] <= batch + probe["max_prompt_rows"]
    prompts = len(set(table.column("prompt_id").to_pylist()))
    assert probe["cap"] == (count if count is not None else -(-prompts // 2))
    picks_per_chunk = batch + probe["max_prompt_rows"]  # at most one pick per prompt of a chunk
    assert probe["max_heap"] <= 2 * probe["cap"] + picks_per_chunk


def test_chunker_holds_whole_prompts_only():
    t = pa.table({"prompt_id": ["a", "a", "a", "b", "c", "c"], "x": list(range(6))})
    chunks = stream.PromptChunks(stream.open_stream(t, ["prompt_id", "x"], batch_size=2))
    got = [(c.column("prompt_id").to_pylist(), start) for c, start in chunks]
    assert got == [(["a", "a", "a"], 0), (["b"], 3), (["c", "c"], 4)]
    assert chunks.max_rows_held <= 2 + 3


def test_non_contiguous_prompt_names_file_row_and_prompt(tmp_path):
    rows = [dict(prompt_id=p, completion_id=f"{p}-{k}", prompt="q", completion=f"t{k}", num_tokens=1, finish_reason="stop",
                 policy_logp=0.0, ref_logp=0.0, reward=float(k), reward_norm=0.0, reward_simpo=0.0)
            for p, k in [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("a", 2)]]
    t = records.from_rows(rows, records.SCORED)
    f = tmp_path / "scored.parquet"
    pq.write_table(t, f)
    for bs in (1, 2, 100):
        with pytest.raises(records.RecordError, match=rf"{f}: row 4, field 'prompt_id': the rows of prompt 'a' are not contiguous"):
            select_margin(f, batch_size=bs)
    assert select_margin(t).num_rows == 1  # the in-memory path accepts any order


def test_stream_errors_name_source_row_and_field(tmp_path):
    rows = [dict(prompt_id=p, completion_id=f"{p}-{k}", prompt="q", completion=f"t{k}", num_tokens=1, finish_reason="stop",
                 policy_logp=0.0, ref_logp=0.0, reward=float(k), reward_norm=0.0, reward_simpo=0.0)
            for p in ("a", "b", "c") for k in range(2)]
    rows[5]["reward"] = float("nan")
    f = tmp_path / "scored.parquet"
    pq.write_table(records.from_rows(rows, records.SCORED), f)
    with pytest.raises(records.RecordError, match=rf"{f}: row 5, field 'reward': not a finite number"):
        select_margin(f, batch_size=2)
    rows[5]["reward"] = 1.0
    rows[4]["completion_id"] = "a-1"  # the same id under another prompt
    pq.write_table(records.from_rows(rows, records.SCORED), f)
    with pytest.raises(records.RecordError, match=rf"{f}: row 4, field 'completion_id': duplicate completion_id 'a-1' \(also at row 1\)"):
        select_margin(f, batch_size=2)
    no_text = records.from_rows(rows, records.SCORED).drop_columns(["completion"])
    with pytest.raises(records.RecordError, match="missing column"):
        select_margin(pa.RecordBatchReader.from_batches(no_text.schema, no_text.to_batches()))


def test_write_parquet_is_atomic_and_batched(tmp_path):
    t = pa.table({"x": list(range(10))})
    f = tmp_path / "out.parquet"
    assert stream.write_parquet(t, f, batch_size=3) == 10
    assert pq.read_table(f).equals(t)
    assert pq.ParquetFile(f).metadata.num_row_groups == 4
    assert not (tmp_path / ".out.parquet.tmp").exists()

    def failing():
        yield pa.record_batch({"x": [1]})
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stream.write_parquet(failing(), tmp_path / "bad.parquet", schema=t.schema)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


@settings(max_examples=50, deadline=None)
@given(scored_tables(max_prompts=10), st.integers(0, 12), st.booleans(), st.integers(0, 3), cut_lists, st.randoms(use_true_random=False))
def test_apl_stream_equals_in_memory(table, count, per_token, seed, cuts, rnd):
    t = shuffled(table, prompt_order_perm(table, rnd))
    ref = apl.select_entropy(table, count=count, per_token=per_token, seed=seed)
    assert same(ref, apl.select_entropy(split(t, cuts), count=count, per_token=per_token, seed=seed))
    assert same(apl.select_certainty(table, count=count, seed=seed), apl.select_certainty(split(t, cuts), count=count, seed=seed))
    some = ref.column("prompt_id")
    assert same(apl.select_certainty(table, count=count, seed=seed, prompts=some),
                apl.select_certainty(split(t, cuts), count=count, seed=seed, prompts=some))


@settings(max_examples=50, deadline=None)
@given(offline_sets(), st.one_of(st.none(), st.integers(0, 10)), st.sampled_from([0.0, 0.3]), st.integers(0, 3), cut_lists,
       st.randoms(use_true_random=False))
def test_sera_offline_stream_equals_in_memory(data, k1, lam, seed, cuts, rnd):
    pairs, scored = data
    ref = sera.select_offline(pairs, scored, k1=k1, lam=lam, seed=seed)
    perm = list(range(pairs.num_rows))
    rnd.shuffle(perm)  # pairs need no grouping: any order streams
    p = shuffled(pairs, perm)
    assert same(ref, sera.select_offline(split(p, cuts), scored, k1=k1, lam=lam, seed=seed))
    assert same(ref, sera._stream_offline(p, scored, k1=k1, k1_fraction=0.7, lam=lam, loss="dpo", seed=seed, batch_size=cuts[0]))


@settings(max_examples=50, deadline=None)
@given(scored_tables(max_prompts=10, max_n=5), st.one_of(st.none(), st.integers(0, 10)), st.sampled_from(["dpo", "simpo"]), st.integers(0, 3),
       cut_lists, st.randoms(use_true_random=False))
def test_sera_bootstrap_stream_equals_in_memory(table, k2, loss, seed, cuts, rnd):
    t = shuffled(table, prompt_order_perm(table, rnd))
    ref = sera.select_bootstrap(table, k2=k2, loss=loss, seed=seed)
    assert same(ref, sera.select_bootstrap(split(t, cuts), k2=k2, loss=loss, seed=seed))
    assert same(ref, sera._stream_bootstrap(t, k2=k2, k2_fraction=None, lam=0.0, loss=loss, seed=seed, batch_size=cuts[0]))


def test_sera_streams_offline_pairs_from_parquet(tmp_path):
    n = 50
    pairs = pa.table({"prompt_id": [f"p{(i * 7) % n:02d}" for i in range(n)], "chosen_id": [f"c{i}" for i in range(n)],
                      "rejected_id": [f"r{i}" for i in range(n)], "chosen_reward": [float(i % 9) for i in range(n)],
                      "rejected_reward": [float(i % 4) for i in range(n)]})
    pq.write_table(pairs, tmp_path / "pairs.parquet", row_group_size=8)
    for it in (2, 3):
        assert same(sera.select_sera(it, pairs), sera.select_sera(it, tmp_path / "pairs.parquet"))

"""Backend-independent sampling: shards, restart, stats, empty/duplicate policy, hf sampler."""

from __future__ import annotations

import json

import pytest

from iterdpo import records
from iterdpo.config import ModelConfig, SampleConfig, load_config
from iterdpo.sampling import (
    SamplingParams,
    collect,
    get_sampler,
    pending_shards,
    postprocess,
    retokenize_mismatch,
    write_shard,
)

from .helpers import check_complete, retokenize_report, toy_prompts

PARAMS = SamplingParams(n=3, temperature=1.0, top_p=1.0, top_k=50, max_tokens=12, seed=1)


def _rows(pid: str, texts: list[str]) -> list[dict]:
    return [
        {"prompt_id": pid, "completion_id": f"{pid}-{k:04d}", "prompt": "p", "completion": t, "num_tokens": 1, "finish_reason": "stop"}
        for k, t in enumerate(texts)
    ]


def test_postprocess_counts_and_policies(tmp_path):
    write_shard(tmp_path, 0, _rows("a", ["x", "x", " ", "y"]), {"retokenize_mismatch": 2})
    write_shard(tmp_path, 1, _rows("b", ["x", "", "", "z"]), {"retokenize_mismatch": 1})
    table = collect(tmp_path)
    kept, stats = postprocess(table)
    assert kept.num_rows == 8 and kept.schema.metadata is None
    # "x" under b is not a duplicate of "x" under a; the second "" under b is both empty and a duplicate
    assert stats == {"retokenize_mismatch": 3, "empty": 3, "duplicate": 2, "dropped": 0}
    kept, stats = postprocess(table, empty="drop", duplicates="keep")
    assert kept.column("completion").to_pylist() == ["x", "x", "y", "x", "z"] and stats["dropped"] == 3
    kept, stats = postprocess(table, empty="keep", duplicates="drop")
    assert kept.column("completion_id").to_pylist() == ["a-0000", "a-0002", "a-0003", "b-0000", "b-0001", "b-0003"]
    kept, stats = postprocess(table, empty="drop", duplicates="drop")
    assert kept.column("completion").to_pylist() == ["x", "y", "x", "z"] and stats["dropped"] == 4


def test_pending_shards(tmp_path):
    assert pending_shards(5, 2, tmp_path) == [(0, 0, 2), (1, 2, 4), (2, 4, 5)]
    write_shard(tmp_path, 1, _rows("a", ["x"]), {})
    assert pending_shards(5, 2, tmp_path) == [(0, 0, 2), (2, 4, 5)]


def test_config_fields():
    cfg = load_config(None, ["sample.backend=server", "sample.num_servers=2", "sample.servers=[]", "sample.empty=drop"])
    assert cfg.sample.num_servers == 2 and cfg.sample.empty == "drop"
    with pytest.raises(ValueError, match="sample.duplicates"):
        load_config(None, ["sample.duplicates=maybe"])


def test_retokenize_mismatch_detects_non_canonical(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = ModelConfig()
    word = "gentle"
    canon = tok(word, add_special_tokens=False)["input_ids"]
    chars = tok.convert_tokens_to_ids(list(word))  # the same text spelt one character at a time
    assert len(canon) < len(chars) and tok.decode(chars) == word
    assert not retokenize_mismatch(tok, [1, 2], word, canon + [tok.eos_token_id], cfg)
    assert not retokenize_mismatch(tok, [1, 2], word, canon, cfg)  # finish_reason length: no EOS
    assert retokenize_mismatch(tok, [1, 2], word, chars + [tok.eos_token_id], cfg)


def test_hf_restart_keeps_finished_shards(tiny_model_dir, tmp_path):
    prompts = records.from_rows(
        [{"prompt_id": records.prompt_id(t), "prompt": t, "source": "t"} for t in ["a b", "c d", "e f", "g h", "i j"]],
        records.PROMPTS,
    )
    kw = dict(model_cfg=ModelConfig(), batch_size=2, progress=None, sample_cfg=SampleConfig())
    sampler = get_sampler("hf")
    first = sampler(str(tiny_model_dir), prompts, PARAMS, tmp_path, **kw)
    check_complete(first, prompts, PARAMS.n)
    # simulate a killed stage: shard 1 missing; shard 0 marked so a rewrite would show
    (tmp_path / "shard-00001.parquet").unlink()
    marked = records.read_table(tmp_path / "shard-00000.parquet").to_pylist()
    marked[0]["completion"] = "MARK"
    records.write_table(records.from_rows(marked, records.COMPLETIONS), tmp_path / "shard-00000.parquet")
    again = sampler(str(tiny_model_dir), prompts, PARAMS, tmp_path, **kw)
    assert again.column("completion").to_pylist()[0] == "MARK"
    # shard seeds do not depend on what ran before: the redone shard is the same
    assert again.slice(2 * PARAMS.n).to_pylist()[1:] == first.slice(2 * PARAMS.n).to_pylist()[1:]
    assert json.loads(again.schema.metadata[b"iterdpo_sampler_stats"]).keys() == {"retokenize_mismatch"}


def test_hf_stop_strings(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = records.from_rows([{"prompt_id": "p", "prompt": "a b", "source": "t"}], records.PROMPTS)
    free = get_sampler("hf")(str(tiny_model_dir), prompts, PARAMS, tmp_path / "free", model_cfg=ModelConfig(), batch_size=1, progress=None)
    text = free.column("completion").to_pylist()[0]
    assert len(text) > 2, "the untrained model should babble"
    stop = text[1:3]
    params = SamplingParams(**{**PARAMS.__dict__, "stop": (stop,)})
    cut = get_sampler("hf")(str(tiny_model_dir), prompts, params, tmp_path / "cut", model_cfg=ModelConfig(), batch_size=1, progress=None)
    row = cut.to_pylist()[0]
    assert stop not in row["completion"] and row["finish_reason"] == "stop"
    assert text.startswith(row["completion"]) and len(tok(row["completion"])["input_ids"]) <= row["num_tokens"]


def test_hf_samples_retokenise_to_the_same_ids(toy_cache, tmp_path):
    """Scoring's encode() gives back exactly the sampled ids of every canonically tokenised
    sample (and only those); the sampler's mismatch count agrees. Non-canonical samples
    (BPE spelling a word with smaller pieces) cannot round-trip through text: the trained
    toy model produces a few (1 of these 64), so that is measured, not forbidden."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_cache / "sft")
    prompts = toy_prompts(toy_cache, 16)
    params = SamplingParams(n=4, temperature=1.0, top_p=1.0, top_k=50, max_tokens=48, seed=3)
    table = get_sampler("hf")(str(toy_cache / "sft"), prompts, params, tmp_path, model_cfg=ModelConfig(), batch_size=8, progress=None)
    check_complete(table, prompts, 4)
    rep = retokenize_report(tok, table, tmp_path)
    assert rep["disagree"] == []
    _, stats = postprocess(table)
    assert stats["retokenize_mismatch"] == rep["total"] - rep["equal"]
    assert rep["canonical"] >= 0.9 * rep["total"], rep

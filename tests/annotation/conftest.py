"""Fixtures for annotation tests: small SCORED / CANDIDATES tables and a tiny reward model."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from iterdpo import records
from iterdpo.toy import task


def make_scored(n_prompts: int = 6, n: int = 4, seed: int = 0):
    """A SCORED table of toy prompts with n responses each and random log-probs."""
    rng = random.Random(seed)
    rows = []
    for p in task.all_prompts()[:n_prompts]:
        pid = records.prompt_id(p["prompt"])
        for k in range(n):
            words = rng.choices(task.POSITIVE + task.NEGATIVE + task.NEUTRAL + p["topics"], k=rng.randint(2, 8))
            lp, rl = -rng.uniform(5, 30), -rng.uniform(5, 30)
            rows.append({
                "prompt_id": pid, "completion_id": f"{pid}-{k:04d}", "prompt": p["prompt"],
                "completion": " ".join(words), "num_tokens": len(words) + 1, "finish_reason": "stop",
                "policy_logp": lp, "ref_logp": rl, "reward": 0.1 * (lp - rl),
                "reward_norm": 0.1 * (lp - rl) / (len(words) + 1), "reward_simpo": 0.1 * lp / (len(words) + 1),
            })
    return records.from_rows(rows, records.SCORED)


def all_pairs(scored):
    """Every in-prompt pair (a_id < b_id) as a CANDIDATES table."""
    by_prompt: dict[str, list[str]] = {}
    for r in scored.to_pylist():
        by_prompt.setdefault(r["prompt_id"], []).append(r["completion_id"])
    rows = [{"prompt_id": p, "a_id": a, "b_id": b, "margin": 0.0, "selector": "all"}
            for p, ids in by_prompt.items() for a, b in itertools.combinations(sorted(ids), 2)]
    return records.from_rows(rows, records.CANDIDATES)


@pytest.fixture
def scored():
    return make_scored()


@pytest.fixture
def candidates(scored):
    return all_pairs(scored)


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory) -> Path:
    return build_tiny_rm(tmp_path_factory.mktemp("rm") / "rm")


def build_tiny_rm(d: Path) -> Path:
    """An untrained LlamaForSequenceClassification (num_labels=1) with the toy tokenizer, saved and reloaded."""
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    from iterdpo.toy.build import build_tokenizer

    corpus = [p["prompt"] for p in task.all_prompts()] + [" ".join(task.POSITIVE + task.NEGATIVE + task.NEUTRAL)] * 10
    tok = build_tokenizer(corpus)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      num_labels=1, pad_token_id=tok.pad_token_id)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # a visible spread of scores: untrained heads start near 0
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    AutoModelForSequenceClassification.from_pretrained(d)
    return d


def fake_run(output_dir: Path, iterations: int = 2, name: str = "toy") -> Path:
    """A run directory whose score and select stages are finished (from make_scored), no models."""
    from iterdpo.rundir import RunDir

    rd = RunDir(Path(output_dir) / name)
    for k in range(1, iterations + 1):
        sc = make_scored(n_prompts=6, seed=k)
        if k == 1:  # the policy is its own reference: every implicit reward is 0
            rows = sc.to_pylist()
            for r in rows:
                r.update(ref_logp=r["policy_logp"], reward=0.0, reward_norm=0.0)
            sc = records.from_rows(rows, records.SCORED)
        cands = all_pairs(sc).slice(0, 8 + 2 * k)
        rd.commit(rd.stage(k, "score"), f"score{k}", lambda tmp, sc=sc: records.write_table(sc, tmp / "scored.parquet"))
        rd.commit(rd.stage(k, "select"), f"select{k}", lambda tmp, c=cands: records.write_table(c, tmp / "candidates.parquet"))
    return rd.root

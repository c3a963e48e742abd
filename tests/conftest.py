"""Shared fixtures: tiny models and tokenizers built offline, saved and reloaded from disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained toy-shaped Llama (hidden 64, 2 layers, head_dim 32) with the toy tokenizer.

    Built in ~2 s with no warm-up; use it where only shapes and plumbing matter.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.toy import task
    from iterdpo.toy.build import build_model, build_tokenizer

    d = tmp_path_factory.mktemp("tiny") / "model"
    corpus = [p["prompt"] for p in task.all_prompts()] + [" ".join(task.POSITIVE + task.NEGATIVE + task.NEUTRAL)] * 10
    tok = build_tokenizer(corpus)
    model = build_model(tok, seed=0)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    AutoModelForCausalLM.from_pretrained(d)  # must reload from disk (sets _name_or_path)
    AutoTokenizer.from_pretrained(d)
    return d


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory) -> Path:
    """The real toy task (warm-up included, ~40 s once per test session).

    Honours an existing ``ITERDPO_CACHE`` so a developer's cached build is reused; sets it
    for subprocesses started by tests.
    """
    from iterdpo.toy.build import ensure_toy

    if "ITERDPO_CACHE" not in os.environ:
        os.environ["ITERDPO_CACHE"] = str(tmp_path_factory.mktemp("iterdpo-cache"))
    return ensure_toy()

"""Sampling: prompts -> N completions per prompt.

Backends share one signature, :data:`Sampler`::

    sampler(model_path, prompts, params, shard_dir, *, model_cfg, batch_size) -> pa.Table

``prompts`` is a PROMPTS table; the result is a COMPLETIONS table. Backends write finished
work to ``shard_dir`` as they go and skip shards already there, so a restarted stage
redoes only unfinished shards. Prompts are rendered with
:func:`iterdpo.logprobs.render_prompt`, the same chat template scoring and training use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

SAMPLERS = {"hf": "iterdpo.sampling.hf:sample_hf"}


@dataclass(frozen=True)
class SamplingParams:
    n: int  # completions per prompt
    temperature: float  # 0 = greedy
    top_p: float
    top_k: int  # 0 = off
    max_tokens: int
    seed: int


def shard_seed(seed: int, shard: int) -> int:
    """Seed of one shard: independent of how many shards ran before a restart."""
    return int(hashlib.sha1(f"{seed}:{shard}".encode()).hexdigest()[:8], 16)


def get_sampler(backend: str) -> Callable:
    if backend not in SAMPLERS:
        raise ValueError(f"unknown sampling backend {backend!r}; available: {sorted(SAMPLERS)}")
    module, fn = SAMPLERS[backend].split(":")
    import importlib

    return getattr(importlib.import_module(module), fn)

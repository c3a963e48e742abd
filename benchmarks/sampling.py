"""Sampling throughput of the hf, vllm and server backends on the same prompts.

Measures generated tokens per second of the sampling itself (model load / engine start /
server start are timed separately and excluded), with the same sampling parameters,
per-request seeds and shard writing as the pipeline. The server pool's overhead is
``t_server / t_vllm - 1`` (target <= 10 %).

    python benchmarks/sampling.py --prompts 256 --n 4 --max-tokens 48 --backends hf,vllm,server

Without ``--model`` it uses the built-in toy model (``ITERDPO_CACHE`` reuses a build).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


score_rows = 0  # set by --score-check


def tokens(table) -> int:
    return sum(table.column("num_tokens").to_pylist())


def bench_hf(model, prompts, params, model_cfg, batch_size, workdir):
    import torch
    from transformers import AutoModelForCausalLM

    from iterdpo.sampling.hf import sample_hf

    t0 = time.perf_counter()  # hf's load is part of sample_hf: time it alone first (page cache warm)
    AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = sample_hf(model, prompts, params, workdir / "hf", model_cfg=model_cfg, batch_size=batch_size, progress=None)
    wall = time.perf_counter() - t0
    return {"start_s": load, "sample_s": wall - load, "tokens": tokens(table), "rows": table.num_rows}


def bench_vllm(model, prompts, params, model_cfg, sample_cfg, batch_size, workdir):
    from iterdpo.sampling import pending_shards
    from iterdpo.sampling.vllm_engine import generate_shards, open_engine, shutdown_engine

    t0 = time.perf_counter()
    llm, tok, lora = open_engine(model, model_cfg, sample_cfg, params.seed)
    start = time.perf_counter() - t0
    rows = prompts.to_pylist()
    try:
        generate_shards(llm, tok, lora, rows[:batch_size], [(0, 0, min(batch_size, len(rows)))], params, workdir / "vllm-warm", model_cfg, sample_cfg)
        d = workdir / "vllm"
        t0 = time.perf_counter()
        generate_shards(llm, tok, lora, rows, pending_shards(len(rows), batch_size, d), params, d, model_cfg, sample_cfg)
        wall = time.perf_counter() - t0
    finally:
        shutdown_engine(llm)
    from iterdpo.sampling import collect

    table = collect(d)
    return {"start_s": start, "sample_s": wall, "tokens": tokens(table), "rows": table.num_rows}


def bench_server(model, prompts, params, model_cfg, sample_cfg, batch_size, workdir):
    from iterdpo.sampling.server import get_pool, sample_server

    pool = get_pool(sample_cfg, model_cfg, seed=params.seed)
    try:
        t0 = time.perf_counter()
        pool.ensure_model(model)
        start = time.perf_counter() - t0
        sample_server(model, prompts.slice(0, batch_size), params, workdir / "server-warm", model_cfg=model_cfg, batch_size=batch_size, progress=None, sample_cfg=sample_cfg)
        t0 = time.perf_counter()
        table = sample_server(model, prompts, params, workdir / "server", model_cfg=model_cfg, batch_size=batch_size, progress=None, sample_cfg=sample_cfg)
        wall = time.perf_counter() - t0
        servers = len(pool.servers)
        check = score_check(pool, model, table, model_cfg) if score_rows else None
    finally:
        pool.shutdown()
    out = {"start_s": start, "sample_s": wall, "tokens": tokens(table), "rows": table.num_rows, "servers": servers}
    if check:
        out["score_check"] = check
    return out


def score_check(pool, model, table, model_cfg) -> dict:
    """prompt_logprobs scoring through the servers vs the exact HF routine on a sample."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.logprobs import score_logps
    from iterdpo.sampling.server import server_logps

    rows = table.slice(0, score_rows).to_pylist()
    tok = AutoTokenizer.from_pretrained(model)
    t0 = time.perf_counter()
    fast = server_logps(pool, tok, rows, model_cfg)
    t_fast = time.perf_counter() - t0
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    t0 = time.perf_counter()
    exact, _ = score_logps(hf, tok, rows, max_prompt_length=model_cfg.max_prompt_length, max_length=model_cfg.max_length, batch_tokens=8192)
    t_exact = time.perf_counter() - t0
    diffs = [abs(a - b) for a, b in zip(fast, exact, strict=True)]
    rank = lambda xs: {i: r for r, i in enumerate(sorted(range(len(xs)), key=xs.__getitem__))}  # noqa: E731
    ra, rb = rank(fast), rank(exact)
    n = len(rows)
    spearman = 1 - 6 * sum((ra[i] - rb[i]) ** 2 for i in range(n)) / (n * (n * n - 1))
    return {"rows": n, "max_abs_diff_nats": max(diffs), "mean_abs_diff_nats": sum(diffs) / n, "spearman": spearman, "server_s": t_fast, "hf_s": t_exact}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the toy model)")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64, help="prompts per shard / generate call")
    ap.add_argument("--concurrency", type=int, default=64, help="server: requests in flight per server")
    ap.add_argument("--num-servers", type=int, default=0)
    ap.add_argument("--prompts-per-request", type=int, default=1, help="server: prompts per request (> 1 implies --no-request-seed)")
    ap.add_argument("--no-request-seed", action="store_true", help="vllm/server: seed only the engine, not each prompt's request")
    ap.add_argument("--backends", default="hf,vllm,server")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--score-check", type=int, default=0, help="server: also score this many completions with prompt_logprobs and compare with the exact HF routine")
    args = ap.parse_args()
    global score_rows
    score_rows = args.score_check

    from iterdpo import records
    from iterdpo.config import ModelConfig, SampleConfig
    from iterdpo.sampling import SamplingParams

    if args.model is None:
        from iterdpo.toy.build import ensure_toy

        toy = ensure_toy()
        model, prompt_file = str(toy / "sft"), toy / "prompts_train.jsonl"
    else:
        model, prompt_file = args.model, None
    if prompt_file is None:
        from iterdpo.toy.build import ensure_toy

        prompt_file = ensure_toy() / "prompts_train.jsonl"
    prompts = records.load_prompts(prompt_file)
    prompts = prompts.slice(0, min(args.prompts, prompts.num_rows))
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=1.0, top_k=50, max_tokens=args.max_tokens, seed=0)
    model_cfg = ModelConfig()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.backends.split(","):
            seeded = not (args.no_request_seed or args.prompts_per_request > 1)
            sample_cfg = SampleConfig(backend=b, concurrency=args.concurrency, num_servers=args.num_servers, request_seed=seeded, prompts_per_request=args.prompts_per_request)
            work = Path(tmp) / b
            if b == "hf":
                r = bench_hf(model, prompts, params, model_cfg, args.batch_size, work)
            elif b == "vllm":
                r = bench_vllm(model, prompts, params, model_cfg, sample_cfg, args.batch_size, work)
            elif b == "server":
                r = bench_server(model, prompts, params, model_cfg, sample_cfg, args.batch_size, work)
            else:
                raise SystemExit(f"unknown backend {b}")
            r["tokens_per_s"] = r["tokens"] / r["sample_s"]
            results[b] = r
            print(f"{b:7s} start {r['start_s']:6.1f} s  sample {r['sample_s']:7.2f} s  {r['rows']} completions  "
                  f"{r['tokens']} tokens  {r['tokens_per_s']:8.0f} tokens/s", flush=True)
            if "score_check" in r:
                print(f"        prompt_logprobs scoring vs exact HF: {json.dumps(r['score_check'])}", flush=True)
    if "vllm" in results and "server" in results:
        over = results["server"]["sample_s"] / results["vllm"]["sample_s"] - 1
        results["server_overhead_vs_vllm"] = over
        print(f"server pool overhead vs the in-process engine: {over * 100:+.1f} % (target <= 10 %)")
    results["env"] = {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "machine": platform.machine(), "args": vars(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":  # vLLM's engine processes are spawned: the guard is required
    main()

"""Sampling throughput of the hf, vllm and server backends on the same prompts.

Measures generated tokens per second of the sampling itself (model load / engine start /
server start are timed separately and excluded), with the same sampling parameters,
per-request seeds and shard writing as the pipeline. The server pool's overhead is
``t_server / t_vllm - 1`` (target <= 10 %).

    python benchmarks/sampling.py --prompts 256 --n 4 --max-tokens 48 --backends hf,vllm,server

Without ``--model`` it uses the built-in toy model (``ITERDPO_CACHE`` reuses a build);
``--model ~/.cache/iterdpo/smollm2-135m --prompt-file .../reviews-v1-seed0/prompts_train.jsonl
--dtype bfloat16`` measures SmolLM2 (benchmarks/real.md);
``--heavy 512,8`` a random-weight Llama with more work per token. ``--prompts-per-request
1,8`` times each seed-group size on the same engine/servers. ``--paired`` keeps the engine
and the server up together and alternates their runs (the idle one sleeps: vLLM's
workers stop spinning 1 s after their last message), so both see the same machine load:
the fair comparison on a shared machine. CPU seconds include vLLM's spin-waits (engine
core and worker poll each other with sched_yield while busy), so they track wall time
and are no measure of work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


score_rows = 0  # set by --score-check


def tokens(table) -> int:
    return sum(table.column("num_tokens").to_pylist())


def tree_cpu() -> float:
    """CPU seconds (user + system) so far of this process and every live descendant: the
    engine core, launched servers and their engine cores. Less sensitive to the other
    agents on the machine than wall time."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for c in me.children(recursive=True):
        try:
            total += sum(c.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def heavy_model(dest: Path, hidden: int, layers: int) -> str:
    """A random-weight Llama (hidden, layers) with the toy tokenizer: more engine work per
    token than the toy (random weights rarely emit EOS, so completions run to max_tokens)."""
    from transformers import AutoTokenizer

    from iterdpo.toy.build import build_model, ensure_toy

    tok = AutoTokenizer.from_pretrained(ensure_toy() / "sft")
    model = build_model(tok, seed=0, hidden=hidden, layers=layers)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return str(dest)


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


def bench_vllm(model, prompts, params, model_cfg, cfgs, batch_size, workdir, repeat=1):
    """One engine; for each sample config of ``cfgs`` (seed groups), ``repeat`` timed runs."""
    from iterdpo.sampling import collect, pending_shards
    from iterdpo.sampling.vllm_engine import generate_shards, open_engine, shutdown_engine

    t0 = time.perf_counter()
    llm, tok, lora = open_engine(model, model_cfg, cfgs[0], params.seed)
    start = time.perf_counter() - t0
    rows = prompts.to_pylist()
    out = []
    try:
        generate_shards(llm, tok, lora, rows[:batch_size], [(0, 0, min(batch_size, len(rows)))], params, workdir / "vllm-warm", model_cfg, cfgs[0])
        for ci, cfg in enumerate(cfgs):
            runs = []
            for r in range(repeat):
                d = workdir / f"vllm-{ci}-{r}"
                t0, c0 = time.perf_counter(), tree_cpu()
                generate_shards(llm, tok, lora, rows, pending_shards(len(rows), batch_size, d), params, d, model_cfg, cfg)
                runs.append((time.perf_counter() - t0, tree_cpu() - c0, os.getloadavg()[0]))
            table = collect(d)
            out.append({"start_s": start, "runs": runs, "tokens": tokens(table), "rows": table.num_rows, "table": table})
    finally:
        shutdown_engine(llm)
    return out


def bench_server(model, prompts, params, model_cfg, cfgs, batch_size, workdir, repeat=1):
    """One pool; for each sample config of ``cfgs``, ``repeat`` timed runs."""
    from iterdpo.sampling.server import get_pool, sample_server

    pool = get_pool(cfgs[0], model_cfg, seed=params.seed)
    out = []
    try:
        t0 = time.perf_counter()
        pool.ensure_model(model)
        start = time.perf_counter() - t0
        sample_server(model, prompts.slice(0, batch_size), params, workdir / "server-warm", model_cfg=model_cfg, batch_size=batch_size, progress=None, sample_cfg=cfgs[0])
        for ci, cfg in enumerate(cfgs):
            runs = []
            for r in range(repeat):
                t0, c0 = time.perf_counter(), tree_cpu()
                table = sample_server(model, prompts, params, workdir / f"server-{ci}-{r}", model_cfg=model_cfg, batch_size=batch_size, progress=None, sample_cfg=cfg)
                runs.append((time.perf_counter() - t0, tree_cpu() - c0, os.getloadavg()[0]))
            out.append({"start_s": start, "runs": runs, "tokens": tokens(table), "rows": table.num_rows, "servers": len(pool.servers), "table": table})
        if score_rows:
            out[-1]["score_check"] = score_check(pool, model, table, model_cfg)
    finally:
        pool.shutdown()
    return out


def bench_paired(model, prompts, params, model_cfg, cfgs, batch_size, workdir, repeat=1):
    """Engine and servers up together; runs alternate engine, server, engine, ... per config.
    Returns {k: [(engine_s, server_s, load), ...]} and the last tables."""
    from iterdpo.sampling import collect, pending_shards
    from iterdpo.sampling.server import get_pool, sample_server
    from iterdpo.sampling.vllm_engine import generate_shards, open_engine, shutdown_engine

    rows = prompts.to_pylist()
    llm, tok, lora = open_engine(model, model_cfg, cfgs[0].model_copy(update={"backend": "vllm"}), params.seed)
    pool = get_pool(cfgs[0], model_cfg, seed=params.seed)
    out, tables = {}, {}
    try:
        pool.ensure_model(model)
        generate_shards(llm, tok, lora, rows[:batch_size], [(0, 0, min(batch_size, len(rows)))], params, workdir / "vllm-warm", model_cfg, cfgs[0])
        sample_server(model, prompts.slice(0, batch_size), params, workdir / "server-warm", model_cfg=model_cfg, batch_size=batch_size, progress=None, sample_cfg=cfgs[0])
        for r in range(repeat):
            for ci, cfg in enumerate(cfgs):
                time.sleep(2)  # let the other backend's processes go idle
                d = workdir / f"pv-{ci}-{r}"
                t0 = time.perf_counter()
                generate_shards(llm, tok, lora, rows, pending_shards(len(rows), batch_size, d), params, d, model_cfg, cfg)
                te = time.perf_counter() - t0
                time.sleep(2)
                t0 = time.perf_counter()
                ts = sample_server(model, prompts, params, workdir / f"ps-{ci}-{r}", model_cfg=model_cfg, batch_size=batch_size, progress=None, sample_cfg=cfg)
                tsv = time.perf_counter() - t0
                out.setdefault(cfg.prompts_per_request, []).append((te, tsv, os.getloadavg()[0]))
                tables[cfg.prompts_per_request] = (collect(d), ts)
    finally:
        pool.shutdown()
        shutdown_engine(llm)
    return out, tables


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
    ap.add_argument("--concurrency", type=int, default=None, help="server: requests in flight per server (default: sample.concurrency's default)")
    ap.add_argument("--num-servers", type=int, default=0)
    ap.add_argument("--prompts-per-request", default="1", help="vllm/server: sample.prompts_per_request (server: prompts per request; both: seed groups); a comma list runs each on the same engine/servers")
    ap.add_argument("--heavy", default=None, metavar="HIDDEN,LAYERS", help="use a random-weight Llama of this size with the toy tokenizer (e.g. 512,8)")
    ap.add_argument("--paired", action="store_true", help="vllm and server up together, runs alternating (see above)")
    ap.add_argument("--repeat", type=int, default=1, help="time each backend's sampling this many times (engine/servers started once)")
    ap.add_argument("--no-request-seed", action="store_true", help="vllm/server: seed only the engine, not each prompt's request")
    ap.add_argument("--backends", default="hf,vllm,server")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model.dtype of every backend")
    ap.add_argument("--prompt-file", default=None, help="prompts (.jsonl/.json/.parquet; default: the toy task's)")
    ap.add_argument("--max-prompt-length", type=int, default=128, help="model.max_prompt_length (SmolLM2's ChatML system prompt: ~30 tokens)")
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
    heavy_tmp = tempfile.TemporaryDirectory()
    if args.heavy:
        hidden, layers = map(int, args.heavy.split(","))
        model = heavy_model(Path(heavy_tmp.name) / "heavy", hidden, layers)
    if args.prompt_file:
        prompt_file = Path(args.prompt_file)
    if prompt_file is None:
        from iterdpo.toy.build import ensure_toy

        prompt_file = ensure_toy() / "prompts_train.jsonl"
    prompts = records.load_prompts(prompt_file)
    prompts = prompts.slice(0, min(args.prompts, prompts.num_rows))
    params = SamplingParams(n=args.n, temperature=args.temperature, top_p=1.0, top_k=50, max_tokens=args.max_tokens, seed=0)
    model_cfg = ModelConfig(dtype=args.dtype, max_prompt_length=args.max_prompt_length)
    results, tables = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        ks = [int(k) for k in str(args.prompts_per_request).split(",")]
        if args.paired:
            cfgs = [SampleConfig(backend="server", concurrency=args.concurrency or SampleConfig.model_fields["concurrency"].default, num_servers=args.num_servers, request_seed=not args.no_request_seed, prompts_per_request=k) for k in ks]
            pairs, ptables = bench_paired(model, prompts, params, model_cfg, cfgs, args.batch_size, Path(tmp), args.repeat)
            for k, runs in pairs.items():
                e, sv = ptables[k]
                same = sum(x == y for x, y in zip(e.to_pylist(), sv.to_pylist(), strict=True)) / e.num_rows
                ratios = sorted(s_ / e_ - 1 for e_, s_, _ in runs)
                results[f"paired k={k}"] = {"runs": runs, "tokens": tokens(e), "overheads": ratios, "same_completions": same}
                desc = "  ".join(f"engine {e_:.2f} s / server {s_:.2f} s ({s_ / e_ - 1:+.0%}, load {la:.1f})" for e_, s_, la in runs)
                print(f"paired k={k}: {tokens(e)} tokens; {desc}; median overhead {statistics.median(ratios):+.1%}; identical completions {same:.1%}", flush=True)
            results["env"] = {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "machine": platform.machine(), "args": vars(args)}
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
            return
        for b in args.backends.split(","):
            cfgs = [
                SampleConfig(backend=b, concurrency=args.concurrency or SampleConfig.model_fields["concurrency"].default, num_servers=args.num_servers, request_seed=not args.no_request_seed, prompts_per_request=k)
                for k in ks
            ]
            work = Path(tmp) / b
            if b == "hf":
                r = bench_hf(model, prompts, params, model_cfg, args.batch_size, work)
                r["runs"] = [(r["sample_s"], float("nan"), os.getloadavg()[0])]
                rs = [r]
            elif b == "vllm":
                rs = bench_vllm(model, prompts, params, model_cfg, cfgs, args.batch_size, work, args.repeat)
            elif b == "server":
                rs = bench_server(model, prompts, params, model_cfg, cfgs, args.batch_size, work, args.repeat)
            else:
                raise SystemExit(f"unknown backend {b}")
            for k, r in zip(ks, rs, strict=False):
                r["sample_s"] = min(w for w, _, _ in r["runs"])
                r["cpu_s"] = min(c for _, c, _ in r["runs"])
                r["tokens_per_s"] = r["tokens"] / r["sample_s"]
                name = b if b == "hf" else f"{b} k={k}"
                tables[name] = r.pop("table", None)
                results[name] = r
                runs = "  ".join(f"{w:.2f} s/{c:.2f} cpu-s (load {la:.1f})" for w, c, la in r["runs"])
                print(f"{name:10s} start {r['start_s']:6.1f} s  sample {r['sample_s']:7.2f} s (best)  {r['rows']} completions  "
                      f"{r['tokens']} tokens  {r['tokens_per_s']:8.0f} tokens/s  runs: {runs}", flush=True)
                if "score_check" in r:
                    print(f"        prompt_logprobs scoring vs exact HF: {json.dumps(r['score_check'])}", flush=True)
    for k in ks:
        v, sv = f"vllm k={k}", f"server k={k}"
        if v in results and sv in results:
            over = results[sv]["sample_s"] / results[v]["sample_s"] - 1
            over_cpu = results[sv]["cpu_s"] / results[v]["cpu_s"] - 1
            a, b = tables[v].to_pylist(), tables[sv].to_pylist()
            same = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
            results[f"overhead k={k}"] = {"wall": over, "cpu": over_cpu, "same_completions": same}
            print(f"k={k} (prompts per request = seed group): server pool overhead vs the in-process engine: {over * 100:+.1f} % wall "
                  f"(best runs), {over_cpu * 100:+.1f} % CPU seconds (target <= 10 %); identical completions: {same:.1%}")
    results["env"] = {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "machine": platform.machine(), "args": vars(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":  # vLLM's engine processes are spawned: the guard is required
    main()

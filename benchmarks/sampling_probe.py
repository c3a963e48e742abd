"""Where one server request's cost goes: client (ServerPool.map vs a bare aiohttp loop) and the
server processes' CPU (API server vs engine core), for 256 toy requests.

    ITERDPO_CACHE=/tmp/tcache python benchmarks/sampling_probe.py [--server-args "..."]

Per probe: wall time, this process's CPU seconds (the client), and the CPU seconds of the
server's API-server process and of its other processes (the engine core), from psutil.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_of(proc) -> tuple[float, float]:
    """(API-server CPU s, CPU s of its children: the engine core)."""
    import psutil

    p = psutil.Process(proc.pid)
    t = p.cpu_times()
    kids = 0.0
    for c in p.children(recursive=True):
        try:
            ct = c.cpu_times()
            kids += ct.user + ct.system
        except psutil.NoSuchProcess:
            pass
    return t.user + t.system, kids


async def aio_map(url: str, bodies: list[dict], concurrency: int) -> int:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    toks = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        async def one(b):
            nonlocal toks
            async with sem, s.post(url, json=b) as r:
                j = await r.json()
                toks += sum(len(c["token_ids"]) for c in j["choices"])

        await asyncio.gather(*(one(b) for b in bodies))
    return toks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-args", default="")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    import os

    from transformers import AutoTokenizer

    from iterdpo import records
    from iterdpo.config import ModelConfig, SampleConfig
    from iterdpo.logprobs import render_prompt
    from iterdpo.sampling.server import get_pool
    from iterdpo.toy.build import ensure_toy

    toy = ensure_toy()
    m = str(toy / "sft")
    tok = AutoTokenizer.from_pretrained(m)
    P = [render_prompt(tok, r["prompt"], 128) for r in records.load_prompts(toy / "prompts_train.jsonl").slice(0, 256).to_pylist()]
    cfg = SampleConfig(backend="server", concurrency=64, server_args=shlex.split(args.server_args))
    pool = get_pool(cfg, ModelConfig())
    pool.ensure_model(m)
    srv = pool.servers[0]
    url = f"{srv.url}/v1/completions"
    print(f"load {os.getloadavg()}; server args {args.server_args!r}", flush=True)

    def probe(name, bodies, how):
        bodies = [dict(b, model=pool.served) for b in bodies]
        a0, e0 = cpu_of(srv.proc)
        c0 = time.process_time()
        t = time.perf_counter()
        if how == "pool":
            toks = [0]

            def done(i, r):
                toks[0] += sum(len(c["token_ids"]) for c in r["choices"])

            pool.map(dict(enumerate(bodies)), done)
            n = toks[0]
        else:
            n = asyncio.run(aio_map(url, bodies, 64))
        dt = time.perf_counter() - t
        cc = time.process_time() - c0
        a1, e1 = cpu_of(srv.proc)
        print(f"{name:34s} {how:7s} {len(bodies)} req {dt:5.2f} s  {n:6d} tok {n / dt:6.0f} tok/s | CPU s: client {cc:5.2f} api {a1 - a0:5.2f} engine {e1 - e0:5.2f}", flush=True)

    base = dict(n=4, temperature=1.0, top_k=50, max_tokens=48, return_token_ids=True)
    floor = [dict(prompt=p, max_tokens=1, n=1, return_token_ids=True) for p in P]
    probe("warm", [dict(base, prompt=p, seed=i) for i, p in enumerate(P[:32])], "pool")
    probe("warm", [dict(base, prompt=p, seed=i) for i, p in enumerate(P[:32])], "aio")
    for _ in range(args.repeat):
        for how in ("pool", "aio"):
            probe("B floor max_tokens=1 n=1", floor, how)
            probe("A per-prompt seeded", [dict(base, prompt=p, seed=i) for i, p in enumerate(P)], how)
        probe("C 8 prompts/request, 1 seed", [dict(base, prompt=P[i:i + 8], seed=i) for i in range(0, 256, 8)], "aio")
    pool.shutdown()


if __name__ == "__main__":
    main()

"""Seconds from a server's death to the re-send of its requests in flight (server backend).

Two vLLM servers (toy model) on ports 8100/8101 as external servers (``sample.servers``),
``concurrency`` 2 each, ``request_timeout`` as given (default 600 s); each round maps 128
seeded requests and, after ``6 + 5 * round`` answers, sends SIGNAL to server 8100's process
group (SIGTERM: what ``scancel`` does to a pool job's processes), then restarts it for the
next round. One JSON line per round: ``resent_at_s`` (seconds from the signal to each increase
of the pool's ``resent`` count), ``last_done_after_kill_s``, lost and duplicated requests, and
the pool's stats (``declared_dead``: the health checks found the server dead).

    python benchmarks/server_failover.py --rounds 4 --signal SIGTERM

Results: benchmarks/sampling.md, "Failover".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ARGS = ["--enforce-eager", "--dtype", "float32", "--seed", "0", "--disable-uvicorn-access-log", "--disable-log-stats",
        "--max-model-len", "256"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--signal", default="SIGTERM", choices=["SIGTERM", "SIGKILL", "SIGSTOP"])
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp/iterdpo-failover"))
    a = ap.parse_args()

    from iterdpo.config import ModelConfig, SampleConfig
    from iterdpo.sampling.server import ServerPool
    from iterdpo.toy.build import ensure_toy

    sft = str(ensure_toy() / "sft")
    sig = getattr(signal, a.signal)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    a.log_dir.mkdir(parents=True, exist_ok=True)

    def start(port: int) -> subprocess.Popen:
        log = open(a.log_dir / f"server-{port}.log", "ab")  # noqa: SIM115 - the server's lifetime
        return subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", sft, *ARGS,
                                 "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)

    procs = {p: start(p) for p in (8100, 8101)}
    try:
        for r in range(a.rounds):
            if procs[8100].poll() is not None:
                procs[8100] = start(8100)
            cfg = SampleConfig(backend="server", servers=["http://127.0.0.1:8100", "http://127.0.0.1:8101"],
                               concurrency=2, request_timeout=a.request_timeout, server_start_timeout=900)
            pool = ServerPool(cfg, ModelConfig())
            pool.ensure_model(sft)
            bodies = {i: {"prompt": [1, 5 + i % 50, 9, 13], "n": 4, "max_tokens": 48, "temperature": 1.0, "seed": i,
                          "return_token_ids": True} for i in range(128)}
            done: dict[int, int] = {}
            times: dict[int, float] = {}
            killed: dict[str, float] = {}
            kill_after = 6 + 5 * r

            def on_done(key, resp, kill_after=kill_after, done=done, times=times, killed=killed):
                done[key] = done.get(key, 0) + 1
                times[key] = time.monotonic()
                if len(done) == kill_after and not killed:
                    killed["t"] = time.monotonic()
                    os.killpg(procs[8100].pid, sig)

            resent: list[float] = []
            stop = threading.Event()

            def watch(pool=pool, resent=resent, stop=stop):
                last = 0
                while not stop.is_set():
                    if pool.stats["resent"] != last:
                        last = pool.stats["resent"]
                        resent.append(time.monotonic())
                    time.sleep(0.05)

            threading.Thread(target=watch, daemon=True).start()
            t0 = time.monotonic()
            pool.map(bodies, on_done)
            stop.set()
            kt = killed["t"]
            print(json.dumps({"round": r, "signal": a.signal, "kill_after": kill_after, "total_s": round(time.monotonic() - t0, 1),
                              "resent_at_s": [round(t - kt, 1) for t in resent],
                              "last_done_after_kill_s": round(max(times.values()) - kt, 1),
                              "lost": len(bodies) - len(done), "dup": sum(v > 1 for v in done.values()), "stats": pool.stats}),
                  flush=True)
            if a.signal == "SIGSTOP":
                os.killpg(procs[8100].pid, signal.SIGKILL)
            procs[8100].wait(120)
    finally:
        for p in procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    main()

"""Judge annotator throughput against a local OpenAI-compatible stub with fixed latency.

Measures wall time of ``JudgeAnnotator.compare`` on N pairs at several concurrency levels,
then the same pairs again from the SQLite cache (a restarted stage). The stub sleeps
``--latency`` seconds per request (a stand-in for a remote judge's response time), so the
numbers show the client's overlap of requests and its cache cost, not any model's speed.

    PYTHONPATH=. python benchmarks/judge_throughput.py --pairs 200 --latency 0.05
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", default="1,4,16")
    args = ap.parse_args()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(args.latency)
            body = json.dumps({"choices": [{"message": {"content": "Comparison: x\nPreferred: A"}}],
                               "usage": {"prompt_tokens": 200, "completion_tokens": 20}}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    from iterdpo.annotation.judge import JudgeAnnotator
    from iterdpo.config import JudgeConfig

    prompts = [f"Write about thing {i}." for i in range(args.pairs)]
    a = [f"good answer {i}" for i in range(args.pairs)]
    b = [f"bad answer {i}" for i in range(args.pairs)]
    print("| concurrency | pairs | latency (s) | wall (s) | pairs/s | cached rerun wall (s) |")
    print("|---|---|---|---|---|---|")
    for c in [int(x) for x in args.concurrency.split(",")]:
        with tempfile.TemporaryDirectory() as d:
            cfg = JudgeConfig(url=f"http://127.0.0.1:{srv.server_address[1]}/v1", concurrency=c)
            j = JudgeAnnotator(cfg, cache_path=Path(d) / "c.sqlite", progress=False)
            t = time.perf_counter()
            j.compare(prompts, a, b)
            wall = time.perf_counter() - t
            j.close()
            j2 = JudgeAnnotator(cfg, cache_path=Path(d) / "c.sqlite", progress=False)
            t = time.perf_counter()
            j2.compare(prompts, a, b)
            cached = time.perf_counter() - t
            assert j2.stats()["requests"] == 0
            j2.close()
        print(f"| {c} | {args.pairs} | {args.latency} | {wall:.2f} | {args.pairs / wall:.1f} | {cached:.3f} |")
    srv.shutdown()


if __name__ == "__main__":
    main()

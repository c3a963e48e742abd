"""Scoring on SmolLM2-135M: the pipeline's log-prob routine against a naive per-response loop.

The rows have the scoring stage's real structure, ``n`` completions per prompt (the reviews
task's training prompts under SmolLM2's chat template; completions are the task's synthetic
reviews, or a sample stage's ``completions.parquet`` with ``--completions``). Ours =
:func:`iterdpo.logprobs.score_logps` as the score stage calls it (the prompt runs once and
its KV cache scores its n completions, batches of at most 20 % padding); naive = one full
forward per response, ``log_softmax``, gather. Reports responses/s, CPU seconds and the
largest log-prob difference between the two.

    OMP_NUM_THREADS=2 python benchmarks/real.py --prompts 16 --n 4 --dtype float32
    OMP_NUM_THREADS=2 python benchmarks/real.py --prompts 16 --n 4 --dtype bfloat16

Sampling throughput on SmolLM2 (hf vs vllm vs server) is ``benchmarks/sampling.py --model``
(commands in benchmarks/real.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def rows_of(prompts: int, n: int, completions: str | None, seed: int = 0) -> list[dict]:
    from iterdpo import records
    from iterdpo.real import reviews

    if completions:
        table = records.read_table(completions).to_pylist()
        by_prompt: dict[str, list[dict]] = {}
        for r in table:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
        groups = [g[:n] for g in by_prompt.values() if len(g) >= n][:prompts]
        return [{"prompt": r["prompt"], "completion": r["completion"], "finish_reason": r["finish_reason"]} for g in groups for r in g]
    rng = random.Random(seed)
    train, _ = reviews.split_prompts()
    return [{"prompt": p["prompt"], "completion": reviews.synthetic_review(rng, p["item"]), "finish_reason": "stop"}
            for p in train[:prompts] for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: smollm2-135m, converted once)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--completions", default=None, help="a sample stage's completions.parquet instead of synthetic reviews")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from training import naive_logps  # benchmarks/training.py: the loop a user would write
    from transformers import AutoTokenizer

    from iterdpo.logprobs import load_causal_lm, score_logps

    model_dir = args.model
    if model_dir is None:
        from iterdpo.real.gguf import ensure_smollm2

        model_dir = str(ensure_smollm2())
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = load_causal_lm(model_dir, args.dtype).eval()  # the score stage's loader (eager attention in bf16 on CPU)
    rows = rows_of(args.prompts, args.n, args.completions)
    kw = dict(max_prompt_length=96, max_length=256)
    score_logps(model, tok, rows[: 2 * args.n], batch_tokens=8192, share_prompts=2, max_pad=0.2, **kw)  # warm-up
    res: dict = {"model": model_dir, "dtype": args.dtype, "responses": len(rows), "threads": torch.get_num_threads()}
    outs = {}
    for name, fn in (
        ("ours", lambda: score_logps(model, tok, rows, batch_tokens=8192, share_prompts=2, max_pad=0.2, **kw)[0]),
        ("naive", lambda: naive_logps(model, tok, rows, "cpu", kw)),
    ):
        t, c = time.perf_counter(), time.process_time()
        outs[name] = fn()
        res[f"{name}_s"] = time.perf_counter() - t
        res[f"{name}_cpu_s"] = time.process_time() - c
        res[f"{name}_resp_per_s"] = len(rows) / res[f"{name}_s"]
    res["speedup_wall"] = res["naive_s"] / res["ours_s"]
    res["speedup_cpu"] = res["naive_cpu_s"] / res["ours_cpu_s"]
    res["max_abs_logp_diff"] = max(abs(a - b) for a, b in zip(outs["ours"], outs["naive"], strict=True))
    res["load_avg_1m"] = os.getloadavg()[0]
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

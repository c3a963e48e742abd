"""Scoring throughput and training cost: iterdpo against a naive loop and TRL 1.16.

    python benchmarks/training.py [--device cpu|cuda] [--hidden 256] [--layers 4] [--pairs 64]
                                  [--batch-size 8] [--steps 6] [--warmup 2] [--threads 1]

Builds a Llama of the given size offline (the toy tokenizer, random weights: the cost of a
step does not depend on what the weights know) and random preference pairs of 4-60
words, then measures on the same model, data and batch size:

(a) scoring: responses/s of ``iterdpo.logprobs.score_logps`` (length-bucketed, at most
    2*batch_size sequences per forward; also with the default 8192-token budget and no
    cap), of a naive loop (one forward per response), and
    of TRL's ``precompute_ref_log_probs`` (its DPOTrainer construction time with the
    option minus without it, batch 2*batch_size sequences);
(b) training: seconds per optimiser step and peak memory of ``iterdpo.training.trainer``
    (stored reference log-probs) and of TRL ``DPOTrainer`` with a live reference model,
    each in its own subprocess, on the same first ``(warmup + steps) * batch_size`` pairs in the
    same batches and order (TRL reads them sequentially in the order iterdpo's length-grouped
    schedule visits them), so step k of one trainer and step k of the other do the same work:
    ``step_time_ratios`` are the per-step ratios ours/TRL, ``time_ratio_ours_over_trl`` the ratio
    of the median steps, ``mean_time_ratio_ours_over_trl`` that of the means (the same timed work
    in all). Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak RSS during
    the timed steps minus the RSS after imports, before the model.

Prints one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]


def clock() -> float:
    """Wall time, or with ``--clock cpu`` this process's CPU time (all its threads): on a
    machine shared with other jobs the CPU time of a 1-thread run moves far less than its wall time."""
    return _clock[0]()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(dest: Path, hidden: int, layers: int, pairs: int, seed: int = 0, vocab: int = 0) -> None:
    """Model + tokenizer + pairs (with reference log-probs = the model's own) under ``dest``.

    ``vocab`` > the toy tokenizer's 384 pads the embedding / LM head to that many rows (the
    softmax then runs over a real model's vocabulary; the extra ids never occur in the data).
    """
    from transformers import AutoModelForCausalLM

    from iterdpo import records
    from iterdpo.toy import task
    from iterdpo.toy.build import build_model, build_tokenizer

    corpus = [p["prompt"] for p in task.all_prompts()] + [" ".join(task.POSITIVE + task.NEGATIVE + task.NEUTRAL)] * 10
    tok = build_tokenizer(corpus)
    model = build_model(tok, seed=seed, hidden=hidden, layers=layers)
    model.config.max_position_embeddings = 1024
    if vocab > len(tok):
        model.resize_token_embeddings(vocab, mean_resizing=False)
    model.save_pretrained(dest / "model")
    tok.save_pretrained(dest / "model")
    AutoModelForCausalLM.from_pretrained(dest / "model")
    rng = random.Random(seed)
    words = task.POSITIVE + task.NEGATIVE + task.NEUTRAL + task.TOPICS
    prompts = [p["prompt"] for p in task.all_prompts()]
    rows = []
    for i in range(pairs):
        c, r = (" ".join(rng.choice(words) for _ in range(rng.randint(4, 60))) for _ in range(2))
        rows.append({"prompt_id": f"p{i}", "prompt": rng.choice(prompts), "chosen": c, "rejected": r, "chosen_id": f"{i}c",
                     "rejected_id": f"{i}r", "chosen_stopped": True, "rejected_stopped": True, "label_source": "bench",
                     "iteration": 1, "ref_chosen_logps": 0.0, "ref_rejected_logps": 0.0,
                     "policy_chosen_logps": float("nan"), "policy_rejected_logps": float("nan")})
    records.write_table(records.from_rows(rows, records.PREFERENCES), dest / "pairs.parquet")


def responses(pairs_path: Path) -> list[dict]:
    from iterdpo import records

    rows = records.read_table(pairs_path).to_pylist()
    return [{"prompt": r["prompt"], "completion": r[k], "finish_reason": "stop"} for r in rows for k in ("chosen", "rejected")]


def naive_logps(model, tok, rows: list[dict], device: str, kw: dict) -> list[float]:
    """The loop a user would write: one full forward per response, log_softmax, gather."""
    import torch

    from iterdpo.logprobs import encode

    out = []
    with torch.no_grad():
        for r in rows:
            e = encode(tok, r["prompt"], r["completion"], stopped=r["finish_reason"] == "stop", **kw)
            ids = torch.tensor([e.input_ids], device=device)
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)  # [T-1, V]
            tgt = ids[0, 1:]
            out.append(float(lp.gather(1, tgt.unsqueeze(-1)).squeeze(-1)[e.prompt_len - 1 :].sum()))
    return out


def grouped_rows(prompts: int, n: int, prompt_words: int, response_words: tuple[int, int], seed: int = 1) -> list[dict]:
    """The scoring stage's real structure: ``n`` sampled completions for each prompt."""
    from iterdpo.toy import task

    rng = random.Random(seed)
    words = task.POSITIVE + task.NEGATIVE + task.NEUTRAL + task.TOPICS
    rows = []
    for _ in range(prompts):
        p = " ".join(rng.choice(words) for _ in range(prompt_words))
        rows += [{"prompt": p, "completion": " ".join(rng.choice(words) for _ in range(rng.randint(*response_words))),
                  "finish_reason": "stop"} for _ in range(n)]
    return rows


def bench_scoring_grouped(d: Path, device: str, prompts: int, n: int, prompt_words: int, response_words: tuple[int, int]) -> dict:
    """responses/s on ``prompts`` x ``n`` completions: ours with prompt sharing, ours bucketed only, naive loop.

    ``_maxpad`` variants also cap padding at 20% of the real tokens of a batch (``max_pad=0.2``).

    Also counts token-forwards (the FLOP proxy: each costs ~2 x non-embedding params
    + 2 x hidden x vocab for the LM head): naive sum(P + R); buckets sum(batch x longest);
    sharing sum over prompts of P + sum over response batches of (batch x longest R).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.logprobs import encode, length_buckets, score_logps

    tok = AutoTokenizer.from_pretrained(d / "model")
    model = AutoModelForCausalLM.from_pretrained(d / "model").to(device).eval()
    rows = grouped_rows(prompts, n, prompt_words, response_words)
    kw = dict(max_prompt_length=512, max_length=1024)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    score_logps(model, tok, rows[: 2 * n], batch_tokens=8192, share_prompts=2, **kw)  # warm-up
    res = {"prompts": prompts, "n": n, "responses": len(rows)}
    times, outs = {}, {}
    variants = (("shared", dict(share_prompts=2)), ("shared_maxpad", dict(share_prompts=2, max_pad=0.2)),
                ("buckets", dict(share_prompts=0)), ("buckets_maxpad", dict(share_prompts=0, max_pad=0.2)))
    for name, extra in variants:
        sync()
        t = clock()
        outs[name], _ = score_logps(model, tok, rows, batch_tokens=8192, **extra, **kw)
        sync()
        times[name] = clock() - t
    sync()
    t = clock()
    outs["naive"] = naive_logps(model, tok, rows, device, kw)
    sync()
    times["naive"] = clock() - t
    enc = [encode(tok, r["prompt"], r["completion"], stopped=True, **kw) for r in rows]
    lens = [len(e.input_ids) for e in enc]
    P = [e.prompt_len for e in enc]
    res["mean_prompt_tokens"] = statistics.mean(P)
    res["mean_response_tokens"] = statistics.mean(a - b for a, b in zip(lens, P, strict=True))
    tf_naive = sum(lens)
    tf_buckets = sum(len(b) * max(lens[i] for i in b) for b in length_buckets(lens, 8192))
    tf_shared = sum(P[g] + n * max(lens[i] - P[i] for i in range(g, g + n)) for g in range(0, len(rows), n))
    res["token_forwards"] = {"naive": tf_naive, "buckets": tf_buckets, "shared": tf_shared}
    for name in times:
        res[f"{name}_resp_per_s"] = len(rows) / times[name]
    for name, _ in variants:
        res[f"speedup_{name}_vs_naive"] = times["naive"] / times[name]
    res["max_abs_logp_diff_shared_vs_naive"] = max(abs(a - b) for a, b in zip(outs["shared"], outs["naive"], strict=True))
    return res


def bench_scoring(d: Path, device: str, batch_size: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.logprobs import score_logps

    tok = AutoTokenizer.from_pretrained(d / "model")
    model = AutoModelForCausalLM.from_pretrained(d / "model").to(device).eval()
    rows = responses(d / "pairs.parquet")
    kw = dict(max_prompt_length=128, max_length=512)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    score_logps(model, tok, rows[:16], batch_tokens=1 << 20, max_batch=2 * batch_size, **kw)  # warm-up
    sync()
    t = clock()
    ours, _ = score_logps(model, tok, rows, batch_tokens=1 << 20, max_batch=2 * batch_size, **kw)
    sync()
    t_ours = clock() - t
    t = clock()
    score_logps(model, tok, rows, batch_tokens=8192, **kw)  # iterdpo's default budget (score.batch_tokens), no cap
    sync()
    t_default = clock() - t
    t = clock()
    naive = naive_logps(model, tok, rows, device, kw)
    sync()
    t_naive = clock() - t
    err = max(abs(a - b) for a, b in zip(ours, naive, strict=True))
    t_trl = trl_precompute_seconds(d, device, batch_size)
    n = len(rows)
    return {"responses": n, "ours_resp_per_s": n / t_ours, "naive_resp_per_s": n / t_naive,
            "trl_precompute_resp_per_s": n / t_trl, "ours_default_budget_resp_per_s": n / t_default,
            "speedup_vs_naive": t_naive / t_ours,
            "speedup_vs_trl_precompute": t_trl / t_ours, "max_abs_logp_diff_vs_naive": err}


def _ours_config(batch_size: int, dtype: str):
    from iterdpo.config import load_config

    return load_config(None, [f"train.batch_size={batch_size}", "train.epochs=1", "train.learning_rate=1e-4",
                              "train.checkpoint_every=0", "model.max_length=512", f"model.dtype={dtype}"])


def ours_order(d: Path, batch_size: int, n: int) -> list[int]:
    """Indices of the first ``n`` pairs in the order iterdpo's trainer visits them (one process,
    seed 0, the one epoch: ``plan_epochs``, what ``train`` itself runs)."""
    from transformers import AutoTokenizer

    from iterdpo import records
    from iterdpo.training.trainer import plan_epochs

    cfg = _ours_config(batch_size, "float32")
    rows = records.read_table(d / "pairs.parquet").to_pylist()[:n]
    _, _, epochs = plan_epochs(AutoTokenizer.from_pretrained(d / "model"), rows, cfg.model, cfg.train, 1, 0)
    return [i for batch in epochs[0] for i in batch]


def _trl_dataset(d: Path, fresh: bool = False, limit: int | None = None, order: list[int] | None = None):
    """The pairs as TRL's conversational dataset; ``limit``: the first ``limit`` pairs only (the ones
    iterdpo's training takes); ``order``: those pairs' indices in the order to write them."""
    from datasets import load_dataset

    from iterdpo import records

    rows = records.read_table(d / "pairs.parquet").to_pylist()[:limit]
    if order is not None:
        rows = [rows[i] for i in order]
    # fresh: no cached reference log-probs
    path = d / (f"trl-{time.time_ns()}.jsonl" if fresh else f"trl-{len(rows)}-{zlib.crc32(str(order).encode()):08x}.jsonl")
    with open(path, "w") as f:  # file-backed: what TRL needs with several processes
        for r in rows:
            f.write(json.dumps({"prompt": [{"role": "user", "content": r["prompt"]}],
                                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                "rejected": [{"role": "assistant", "content": r["rejected"]}]}) + "\n")
    return load_dataset("json", data_files=str(path), split="train")


def _trl_args(d: Path, device: str, batch_size: int, steps: int, **kw):
    from trl import DPOConfig

    return DPOConfig(output_dir=str(d / "trl_out"), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=1e-4,
                     beta=0.1, use_cpu=device == "cpu", bf16=False, gradient_checkpointing=False, max_length=512,
                     logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, seed=0, **kw)


def trl_precompute_seconds(d: Path, device: str, batch_size: int) -> float:
    """Seconds inside TRL's ``_precompute_ref_logps`` (its dataloader, collator and forwards; a cache miss)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    spent = []

    class Timed(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            t = clock()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            spent.append(clock() - t)
            return out

    tok = AutoTokenizer.from_pretrained(d / "model")
    args = _trl_args(d, device, batch_size, 1, precompute_ref_log_probs=True, precompute_ref_batch_size=batch_size)
    Timed(model=AutoModelForCausalLM.from_pretrained(d / "model"), args=args, train_dataset=_trl_dataset(d, fresh=True), processing_class=tok)
    return spent[0]


# --- training, one subprocess per trainer --------------------------------------------


def preimport() -> None:
    """The same libraries in both training subprocesses before the RSS baseline is read."""
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import trl  # noqa: F401
    from trl import DPOTrainer  # noqa: F401

    import iterdpo.training.trainer  # noqa: F401

    try:
        import deepspeed  # noqa: F401  (accelerate/transformers import it lazily when installed)
    except ImportError:
        pass


def train_ours(d: Path, device: str, batch_size: int, steps: int, warmup: int, dtype: str = "float32") -> dict:
    import torch

    from iterdpo import records
    from iterdpo.training.trainer import train

    preimport()
    base = rss_mb()
    marks: list[tuple[float, float]] = []

    class Clock(list):
        def append(self, x):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            marks.append((clock(), torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_mb()))
            super().append(x)

    pairs = records.read_table(d / "pairs.parquet")
    n = (warmup + steps) * batch_size
    cfg = _ours_config(batch_size, dtype)
    train(pairs.slice(0, n), str(d / "model"), d / "ours_out", tokenizer_path=None, model_cfg=cfg.model, cfg=cfg.train,
          seed=0, progress=None, history=Clock())
    return _timing(marks, warmup, base, device)


def train_trl(d: Path, device: str, batch_size: int, steps: int, warmup: int, dtype: str = "float32") -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOTrainer

    preimport()
    base = rss_mb()
    marks: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            marks.append((clock(), torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_mb()))

    tok = AutoTokenizer.from_pretrained(d / "model")
    n = (warmup + steps) * batch_size
    ds = _trl_dataset(d, limit=n, order=ours_order(d, batch_size, n))
    args = _trl_args(d, device, batch_size, warmup + steps, train_sampling_strategy="sequential")
    # weights in ``dtype`` (bf16=False: no autocast), as iterdpo's model.dtype; TRL copies the reference from it
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(d / "model", dtype=getattr(torch, dtype)), args=args, train_dataset=ds,
                         processing_class=tok, callbacks=[Clock()])
    trainer.train()
    return _timing(marks, warmup, base, device)


def _timing(marks, warmup, base, device) -> dict:
    times = [b[0] - a[0] for a, b in zip(marks[warmup - 1 : -1], marks[warmup:], strict=True)] if warmup else []
    peak = marks[-1][1]
    return {"s_per_step": statistics.median(times), "s_per_step_mean": statistics.mean(times), "steps_timed": len(times),
            "step_seconds": [round(t, 4) for t in times],
            "peak_mem_mb": peak if device.startswith("cuda") else peak - base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--pairs", type=int, default=128, help="pairs built (2x responses for scoring)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per training step; scoring: 2x sequences per forward")
    p.add_argument("--steps", type=int, default=6, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--vocab", type=int, default=0, help="pad the vocabulary to this size (0: the toy's 384)")
    p.add_argument("--n", type=int, default=8, help="grouped scoring: completions per prompt")
    p.add_argument("--prompts", type=int, default=8, help="grouped scoring: prompts")
    p.add_argument("--prompt-words", type=int, default=150, help="grouped scoring: words per prompt (~1 token each)")
    p.add_argument("--response-words", default="20,200", help="grouped scoring: min,max words per completion")
    p.add_argument("--skip", default="", help="comma list of parts to skip: pairs,grouped,training")
    p.add_argument("--clock", choices=sorted(CLOCK), default="wall", help="'cpu': process CPU time (shared CPU machines)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="training weights dtype (both trainers)")
    p.add_argument("--trl-env", default="", help="extra VAR=VALUE,... for the TRL subprocess only")
    p.add_argument("--workdir")
    p.add_argument("--chunk-elements", type=int, default=None,
                   help="ours (scoring and training): logits per chunk of the log-prob routines, on CPU and CUDA "
                        "(default: iterdpo.lm_head.chunk_elements)")
    p.add_argument("--keep-elements", type=int, default=None,
                   help="ours (training): float32 softmax elements the fused LM head may keep for its backward "
                        "instead of recomputing the logits (default: iterdpo.lm_head.KEEP_ELEMENTS; 0: always recompute)")
    p.add_argument("--part", choices=["ours", "trl"], help=argparse.SUPPRESS)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    _clock[0] = CLOCK[a.clock]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from iterdpo import lm_head

    if a.chunk_elements:
        lm_head.CHUNK_ELEMENTS = lm_head.CUDA_CHUNK_ELEMENTS = a.chunk_elements
    if a.keep_elements is not None:
        lm_head.KEEP_ELEMENTS = a.keep_elements
    if a.part:  # a training subprocess
        d = Path(a.workdir)
        fn = train_ours if a.part == "ours" else train_trl
        print("RESULT " + json.dumps(fn(d, a.device, a.batch_size, a.steps, a.warmup, a.dtype)), flush=True)
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    d = Path(a.workdir or tempfile.mkdtemp(prefix="iterdpo-bench-"))
    if not (d / "pairs.parquet").exists():
        build(d, a.hidden, a.layers, max(a.pairs, (a.steps + a.warmup) * a.batch_size), vocab=a.vocab)
    res = {"clock": a.clock, "device": a.device, "dtype": a.dtype, "trl_env": a.trl_env, "hidden": a.hidden, "layers": a.layers, "batch_size": a.batch_size, "threads": a.threads,
           "load_avg_start": os.getloadavg()}
    skip = set(a.skip.split(",")) - {""}
    from transformers import AutoModelForCausalLM

    res["params"] = sum(x.numel() for x in AutoModelForCausalLM.from_pretrained(d / "model").parameters())
    res["vocab"] = AutoModelForCausalLM.from_pretrained(d / "model").config.vocab_size
    if "pairs" not in skip:
        res["scoring"] = bench_scoring(d, a.device, a.batch_size)
    if "grouped" not in skip:
        lo, hi = (int(x) for x in a.response_words.split(","))
        res["scoring_grouped"] = bench_scoring_grouped(d, a.device, a.prompts, a.n, a.prompt_words, (lo, hi))
    if "training" in skip:
        res["load_avg_end"] = os.getloadavg()
        print(json.dumps(res), flush=True)
        return
    res["training"] = {}
    for part in ("ours", "trl"):
        cmd = [sys.executable, __file__, "--part", part, "--workdir", str(d), "--device", a.device, "--batch-size",
               str(a.batch_size), "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads), "--clock", a.clock,
               "--dtype", a.dtype]
        if part == "ours" and a.chunk_elements:
            cmd += ["--chunk-elements", str(a.chunk_elements)]
        if part == "ours" and a.keep_elements is not None:
            cmd += ["--keep-elements", str(a.keep_elements)]
        extra = dict(kv.split("=", 1) for kv in a.trl_env.split(",") if kv) if part == "trl" else {}
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads), **extra})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise RuntimeError(f"{part} training failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        res["training"][part] = json.loads(line[0][7:])
    o, t = res["training"]["ours"], res["training"]["trl"]
    res["training"]["time_ratio_ours_over_trl"] = o["s_per_step"] / t["s_per_step"]
    res["training"]["mean_time_ratio_ours_over_trl"] = o["s_per_step_mean"] / t["s_per_step_mean"]
    res["training"]["step_time_ratios"] = [round(a / b, 3) for a, b in zip(o["step_seconds"], t["step_seconds"], strict=True)]
    res["training"]["mem_ratio_ours_over_trl"] = o["peak_mem_mb"] / t["peak_mem_mb"]
    res["load_avg_end"] = os.getloadavg()
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()

"""GPU check: scoring and training in bf16 on a 1B-shaped random Llama, iterdpo next to TRL.

    bash benchmarks/gpu/check.sh            # one GPU, <= 8 minutes on an H200
    bash benchmarks/gpu/check.sh --smoke    # a tiny model on CPU in seconds (what CI runs)

Needs only torch, transformers, accelerate and this repository (no vLLM, no DeepSpeed, no
download: the tokenizer is the toy one, built offline, and the weights are random; the cost
of a step does not depend on what the weights know). Steps, each printed as it finishes:

1. build: a Llama of Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads / 8 KV heads,
   MLP 8192, vocabulary 128,256, tied embeddings; 1.24 B parameters) saved in bf16, and
   ``--pairs`` preference pairs of random toy-vocabulary responses.
2. padding: a row's bf16 log-prob alone and after its prompt's KV cache vs inside a
   right-padded batch, with SDPA and with eager attention (max |difference|, nats, and as a
   fraction of training's start-check tolerance): whether bf16 training can start on this
   device. Every bf16 forward of iterdpo's scoring and training passes an explicit causal
   mask (``iterdpo.logprobs``), so SDPA runs one kernel with and without padding.
3. scoring: ``iterdpo.logprobs.score_logps`` over every response (no grad), tokens/s and MFU
   (2 N FLOPs per token); the scored log-probs become the pairs' reference and start
   log-probs, so training's first-step check runs on CUDA in bf16.
4. head routes (CUDA only): one micro-step's forward + backward per LM-head route
   (:func:`head_routes`): what the fused, chunked head costs against the model's own head.
5. training: seconds per optimiser step, tokens/s, MFU (6 N FLOPs per trained token, the
   useful work of either trainer; TRL also runs a reference forward) and peak
   ``torch.cuda.max_memory_allocated`` of ``iterdpo.training.trainer.train`` and, when
   ``trl`` imports, of TRL's ``DPOTrainer`` on the same pairs, model, dtype and batch size
   (each in its own subprocess, through ``benchmarks/training.py --part``).

Prints one line per result and a final JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SHAPES = {
    # Llama-3.2-1B's shape
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               vocab_size=128256),
    # a few-second CPU smoke run
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  vocab_size=1024),
}
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16 tensor-core peak


def say(*a) -> None:
    print("[gpu-check]", *a, flush=True)


def build(d: Path, shape: dict, pairs: int, words: tuple[int, int], seed: int = 0) -> int:
    """Model (bf16) + toy tokenizer in ``d/model``; returns the parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from iterdpo.toy import task
    from iterdpo.toy.build import build_tokenizer

    corpus = [p["prompt"] for p in task.all_prompts()] + [" ".join(task.POSITIVE + task.NEGATIVE + task.NEUTRAL + task.TOPICS)] * 10
    tok = build_tokenizer(corpus)
    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    n = sum(p.numel() for p in model.parameters())
    rng = random.Random(seed)
    vocab = task.POSITIVE + task.NEGATIVE + task.NEUTRAL + task.TOPICS
    prompts = [p["prompt"] for p in task.all_prompts()]
    rows = []
    for i in range(pairs):
        c, r = (" ".join(rng.choice(vocab) for _ in range(rng.randint(*words))) for _ in range(2))
        rows.append({"prompt_id": f"p{i}", "prompt": rng.choice(prompts), "chosen": c, "rejected": r, "chosen_id": f"{i}c",
                     "rejected_id": f"{i}r", "chosen_stopped": True, "rejected_stopped": True, "label_source": "bench",
                     "iteration": 1})
    (d / "rows.json").write_text(json.dumps(rows))
    return n


def padding_gap(d: Path, device: str, n_pairs: int = 8) -> dict:
    """Max |log-prob alone - log-prob in a padded batch| (and after the prompt's KV cache, as
    the score stage's default ``share_prompts`` computes it) over the chosen and rejected
    responses of ``n_pairs`` pairs, per attention kernel, and the largest gap as a fraction of
    training's start-check tolerance for that row (``iterdpo.logprobs.check_tolerance``, base
    1e-3): at most 1 is what bf16 training needs on this device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.logprobs import check_tolerance, score_logps

    tok = AutoTokenizer.from_pretrained(d / "model")
    rows = json.loads((d / "rows.json").read_text())[:n_pairs]
    resp = [{"prompt": r["prompt"], "completion": r[k], "finish_reason": "stop"} for r in rows for k in ("chosen", "rejected")]
    kw = dict(max_prompt_length=128, max_length=512)
    out = {}
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(d / "model", dtype=torch.bfloat16, attn_implementation=attn).to(device).eval()
        batched, n = score_logps(model, tok, resp, batch_tokens=1 << 20, **kw)
        tolerance = check_tolerance(1e-3, "bfloat16", torch.tensor(n)).tolist()
        for name, options in (("alone", dict(batch_tokens=1)), ("shared_prompt", dict(batch_tokens=1 << 20, share_prompts=2))):
            other, _ = score_logps(model, tok, resp, **options, **kw)
            gaps = [abs(a - b) for a, b in zip(other, batched, strict=True)]
            out[f"{attn}_{name}"] = max(gaps)
            out[f"{attn}_{name}_over_tolerance"] = max(g / t for g, t in zip(gaps, tolerance, strict=True))
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def scoring(d: Path, device: str, n_params: int, peak_tflops: float | None) -> dict:
    """Score every response in bf16; write pairs.parquet with the scores as reference and start log-probs."""
    import torch
    from transformers import AutoTokenizer

    from iterdpo import records
    from iterdpo.logprobs import load_causal_lm, score_logps

    tok = AutoTokenizer.from_pretrained(d / "model")
    rows = json.loads((d / "rows.json").read_text())
    resp = [{"prompt": r["prompt"], "completion": r[k], "finish_reason": "stop"} for r in rows for k in ("chosen", "rejected")]
    model = load_causal_lm(str(d / "model"), "bfloat16", device).eval()
    kw = dict(max_prompt_length=128, max_length=512, batch_tokens=32768, max_batch=64)
    score_logps(model, tok, resp[: min(len(resp), 8)], **kw)  # warm-up (kernels, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    lp, _ = score_logps(model, tok, resp, **kw)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    from iterdpo.logprobs import encode

    tokens = sum(len(encode(tok, r["prompt"], r["completion"], stopped=True, max_prompt_length=128, max_length=512).input_ids) for r in resp)
    for i, r in enumerate(rows):
        r.update(ref_chosen_logps=lp[2 * i], ref_rejected_logps=lp[2 * i + 1], policy_chosen_logps=lp[2 * i],
                 policy_rejected_logps=lp[2 * i + 1])
    records.write_table(records.from_rows(rows, records.PREFERENCES), d / "pairs.parquet")
    res = {"responses": len(resp), "tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt}
    if peak_tflops:
        res["mfu"] = 2 * n_params * tokens / dt / (peak_tflops * 1e12)
    if device.startswith("cuda"):
        res["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    del model
    return res


def head_routes(d: Path, device: str, n_pairs: int = 8, repeats: int = 5) -> dict:
    """Milliseconds of one forward + backward of ``2 n_pairs`` padded bf16 sequences (one
    training micro-step's batch) per LM-head route of :func:`iterdpo.logprobs.sequence_logps`:
    the fused, chunked head at 2^22 logits a chunk (the CPU default), 2^25 (the CUDA default,
    ``iterdpo.lm_head.CUDA_CHUNK_ELEMENTS``) and 2^28, and the model's own head
    (fused_head=False: [B, T', V] logits, as TRL computes them)."""
    import torch
    from transformers import AutoTokenizer

    from iterdpo import lm_head
    from iterdpo.logprobs import collate, encode, load_causal_lm, sequence_logps

    tok = AutoTokenizer.from_pretrained(d / "model")
    rows = json.loads((d / "rows.json").read_text())[:n_pairs]
    enc = [encode(tok, r["prompt"], r[k], stopped=True, max_prompt_length=128, max_length=512) for k in ("chosen", "rejected") for r in rows]
    batch = collate(enc, tok.pad_token_id, device)
    model = load_causal_lm(str(d / "model"), "bfloat16", device).train()
    default = lm_head.CUDA_CHUNK_ELEMENTS
    out = {"tokens": int(batch["attention_mask"].sum()), "padded_tokens": int(batch["attention_mask"].numel())}
    for name, chunk, fused in (("fused_chunk_2^22", 1 << 22, True), ("fused_chunk_2^25", 1 << 25, True),
                               ("fused_chunk_2^28", 1 << 28, True), ("model_head", default, False)):
        lm_head.CUDA_CHUNK_ELEMENTS = chunk
        times = []
        torch.cuda.reset_peak_memory_stats()
        for i in range(repeats + 1):
            torch.cuda.synchronize()
            t = time.perf_counter()
            sequence_logps(model, batch, fused_head=fused).logps.sum().backward()
            torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
        out[name] = {"ms": 1e3 * sorted(times)[len(times) // 2], "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20}
    lm_head.CUDA_CHUNK_ELEMENTS = default
    del model
    torch.cuda.empty_cache()
    return out


def training(d: Path, device: str, part: str, batch_size: int, steps: int, warmup: int, timeout: int) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "training.py"), "--part", part, "--workdir", str(d), "--device", device,
           "--batch-size", str(batch_size), "--steps", str(steps), "--warmup", str(warmup), "--dtype", "bfloat16"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        return {"error": (out.stdout[-1500:] + out.stderr[-2500:]).strip()}
    return json.loads(line[0][7:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny model, CPU, seconds")
    p.add_argument("--device", default=None, help="default: cuda if available (--smoke: cpu)")
    p.add_argument("--pairs", type=int, default=None, help="default 256 (smoke 4)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per training step (default 8; smoke 2)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10; smoke 1)")
    p.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak for MFU (default: from the device name)")
    p.add_argument("--no-trl", action="store_true", help="skip TRL even if it imports (CI's smoke run)")
    p.add_argument("--workdir")
    a = p.parse_args()
    import torch

    shape = SHAPES["smoke" if a.smoke else "1b"]
    device = a.device or ("cpu" if a.smoke else ("cuda" if torch.cuda.is_available() else "cpu"))
    if not a.smoke and device == "cpu":
        say("no CUDA device: run with --smoke on CPU")
        return 2
    pairs = a.pairs or (4 if a.smoke else 256)
    batch_size = a.batch_size or (2 if a.smoke else 8)
    steps = a.steps or (1 if a.smoke else 10)
    warmup = 1
    words = (4, 20) if a.smoke else (50, 400)
    peak = a.peak_tflops
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    if peak is None:
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    res = {"device": name, "torch": torch.__version__, "shape": shape, "pairs": pairs, "batch_size": batch_size,
           "steps": steps, "peak_tflops": peak}
    d = Path(a.workdir or tempfile.mkdtemp(prefix="iterdpo-gpu-check-"))
    t0 = time.perf_counter()
    res["params"] = n = build(d, shape, pairs, words)
    say(f"device {name}, torch {torch.__version__}, {n / 1e9:.3f} B params, build {time.perf_counter() - t0:.0f} s")
    res["padding_gap_nats"] = padding_gap(d, device)
    say("bf16 padding gap (row alone / after its prompt's KV cache vs in a padded batch), nats:", json.dumps(res["padding_gap_nats"]))
    res["scoring"] = sc = scoring(d, device, n, peak)
    say(f"scoring: {sc['tokens_per_s']:,.0f} tokens/s" + (f", MFU {sc['mfu']:.1%}" if "mfu" in sc else "")
        + (f", peak {sc['peak_mem_mib']:,.0f} MiB" if "peak_mem_mib" in sc else ""))
    if device.startswith("cuda"):
        res["head_routes"] = hr = head_routes(d, device)
        say("forward + backward of one micro-step (ms, peak MiB):",
            json.dumps({k: [round(v["ms"], 1), round(v["peak_mem_mib"])] for k, v in hr.items() if isinstance(v, dict)}))
    rows = json.loads((d / "rows.json").read_text())
    from transformers import AutoTokenizer

    from iterdpo.logprobs import encode

    tok = AutoTokenizer.from_pretrained(d / "model")

    def step_tokens(i: int) -> int:  # real (unpadded) tokens of chosen + rejected of pair i
        r = rows[i]
        return sum(len(encode(tok, r["prompt"], r[k], stopped=True, max_prompt_length=128, max_length=512).input_ids)
                   for k in ("chosen", "rejected"))

    tokens_per_step = sum(step_tokens(i) for i in range(min(len(rows), (steps + warmup) * batch_size))) / (steps + warmup)
    parts = ["ours"] + (["trl"] if importlib.util.find_spec("trl") and not a.no_trl else [])
    if "trl" not in parts:
        say("TRL skipped (--no-trl)" if a.no_trl else "TRL is not importable here: training compared with nothing")
    res["training"] = {}
    for part in parts:
        r = training(d, device, part, batch_size, steps, warmup, timeout=240)
        if "s_per_step" in r:
            r["tokens_per_s"] = tokens_per_step / r["s_per_step"]
            if peak:
                r["mfu"] = 6 * n * tokens_per_step / r["s_per_step"] / (peak * 1e12)
            say(f"training {part}: {r['s_per_step']:.3f} s/step, {r['tokens_per_s']:,.0f} tokens/s"
                + (f", MFU {r['mfu']:.1%}" if "mfu" in r else "") + f", peak {r['peak_mem_mb']:,.0f} MiB")
        else:
            say(f"training {part} failed:\n{r['error']}")
        res["training"][part] = r
    t = res["training"]
    if "s_per_step" in t.get("ours", {}) and "s_per_step" in t.get("trl", {}):
        t["time_ratio_ours_over_trl"] = t["ours"]["s_per_step"] / t["trl"]["s_per_step"]
        t["mem_ratio_ours_over_trl"] = t["ours"]["peak_mem_mb"] / t["trl"]["peak_mem_mb"]
        say(f"ours / TRL: time {t['time_ratio_ours_over_trl']:.2f}x, peak memory {t['mem_ratio_ours_over_trl']:.2f}x")
    res["seconds"] = time.perf_counter() - t0
    print(json.dumps(res), flush=True)
    return 0 if "s_per_step" in t.get("ours", {}) else 1


if __name__ == "__main__":
    raise SystemExit(main())

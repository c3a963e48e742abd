"""HF ``generate`` on a model under glibc's malloc settings: what the trainer's mmap threshold
costs the stages that run after it in the same process (sampling, evaluation answers).

    python benchmarks/generate_malloc.py MODEL_DIR [--mmap-threshold BYTES] [--trim-threshold BYTES]
                                         [--prompts 32] [--n 2] [--max-tokens 48]

``--mmap-threshold`` / ``--trim-threshold`` call ``mallopt`` (M_MMAP_THRESHOLD / M_TRIM_THRESHOLD)
before the model loads; neither: glibc's adaptive defaults. Then one timed sampled ``generate``
(top-k 50, every answer ``max_tokens`` long). Prints one JSON line: wall seconds, user and
system CPU seconds, minor page faults. E.g. ``MODEL_DIR=$ITERDPO_CACHE/smollm2-135m``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import resource
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--mmap-threshold", type=int, help="M_MMAP_THRESHOLD in bytes (e.g. 131072, 524288, 33554432)")
    p.add_argument("--trim-threshold", type=int, help="M_TRIM_THRESHOLD in bytes (e.g. 67108864)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=2, help="answers per prompt")
    p.add_argument("--max-tokens", type=int, default=48)
    a = p.parse_args()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if a.mmap_threshold is not None:
        libc.mallopt(-3, a.mmap_threshold)
    if a.trim_threshold is not None:
        libc.mallopt(-1, a.trim_threshold)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a.model)
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Write a positive review of product number {i}."}],
                                       add_generation_prompt=True, tokenize=False) for i in range(a.prompts)]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with torch.no_grad():
        model.generate(**enc, do_sample=True, top_k=50, max_new_tokens=a.max_tokens, min_new_tokens=a.max_tokens,
                       num_return_sequences=a.n)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"mmap_threshold": a.mmap_threshold, "trim_threshold": a.trim_threshold, "wall_s": round(wall, 2),
                      "user_s": round(after.ru_utime - before.ru_utime, 2), "sys_s": round(after.ru_stime - before.ru_stime, 2),
                      "minor_faults": after.ru_minflt - before.ru_minflt}))


if __name__ == "__main__":
    main()

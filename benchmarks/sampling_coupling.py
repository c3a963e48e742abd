"""What seed groups cost: how much the samples of different prompts sharing a seed agree.

With ``sample.prompts_per_request = k`` and ``request_seed`` the k prompts of a seed group
share one seed, and sample j of each of them draws the same sampler noise (vLLM seeds
sample j of a request with seed + j). This samples the first ``--prompts`` toy prompts
(n samples each) on one in-process engine three ways: distinct per-prompt seeds (k=1),
seed groups of k, and unseeded. For pairs of prompts in the same group of k (a, b with
a // k == b // k) and, as control, pairs in different groups (b = a + k), it compares
sample j of a with sample j of b: share of identical completions, and share of equal
tokens at equal positions (over the shorter one's length). It also samples two copies of
the same prompts (duplicates in a data set) in one group.

    ITERDPO_CACHE=/tmp/tcache python benchmarks/sampling_coupling.py --prompts 256 --k 8
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def agreement(ids: dict, pairs: list[tuple[int, int]], pids: list[str], n: int) -> tuple[float, float]:
    """(share identical, share of equal tokens at equal positions) of sample j of a vs of b."""
    same = tok_eq = tok_all = 0
    for a, b in pairs:
        for j in range(n):
            x, y = ids[f"{pids[a]}-{j:04d}"], ids[f"{pids[b]}-{j:04d}"]
            same += x == y
            m = min(len(x), len(y))
            tok_eq += sum(u == v for u, v in zip(x[:m], y[:m], strict=True))
            tok_all += m
    return same / (len(pairs) * n), tok_eq / max(1, tok_all)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()

    from iterdpo import records
    from iterdpo.config import ModelConfig, SampleConfig
    from iterdpo.sampling import SamplingParams, collect, pending_shards
    from iterdpo.sampling.vllm_engine import generate_shards, open_engine, shutdown_engine
    from iterdpo.toy.build import ensure_toy
    from tests.sampling.helpers import sampled_ids

    toy = ensure_toy()
    model = str(toy / "sft")
    prompts = records.load_prompts(toy / "prompts_train.jsonl").slice(0, args.prompts)
    rows = prompts.to_pylist()
    k, n = args.k, args.n
    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, top_k=50, max_tokens=args.max_tokens, seed=0)
    model_cfg = ModelConfig()
    within = [(a, b) for g in range(0, len(rows), k) for a, b in itertools.combinations(range(g, min(g + k, len(rows))), 2)]
    across = [(a, a + k) for a in range(len(rows) - k)]
    # duplicates: the first prompts / 2 prompts twice, copy i at index 2i and 2i+1 (same group when k is even)
    half = rows[: len(rows) // 2]
    dup_rows = [dict(r, prompt_id=f"{r['prompt_id']}-{c}") for r in half for c in (0, 1)]
    dup_pairs = [(2 * i, 2 * i + 1) for i in range(len(half))]
    llm, tok, lora = open_engine(model, model_cfg, SampleConfig(backend="vllm"), params.seed)
    try:
        print(f"{len(rows)} toy prompts, n={n}, k={k}; pairs of prompts: {len(within)} within groups, {len(across)} across", flush=True)
        print("| seeding | identical, same group | identical, other groups | equal tokens, same group | equal tokens, other groups | identical, duplicate prompts |")
        print("|---|---|---|---|---|---|")
        for name, cfg in (
            ("distinct per-prompt seeds (k=1)", SampleConfig(backend="vllm", prompts_per_request=1)),
            (f"seed groups of k={k}", SampleConfig(backend="vllm", prompts_per_request=k)),
            ("unseeded", SampleConfig(backend="vllm", request_seed=False)),
        ):
            with tempfile.TemporaryDirectory() as d:
                generate_shards(llm, tok, lora, rows, pending_shards(len(rows), 64, Path(d)), params, Path(d), model_cfg, cfg)
                ids = sampled_ids(Path(d))
                assert collect(Path(d)).num_rows == len(rows) * n
            with tempfile.TemporaryDirectory() as d:
                generate_shards(llm, tok, lora, dup_rows, pending_shards(len(dup_rows), 64, Path(d)), params, Path(d), model_cfg, cfg)
                dup_ids = sampled_ids(Path(d))
            pids = [r["prompt_id"] for r in rows]
            w, a = agreement(ids, within, pids, n), agreement(ids, across, pids, n)
            dd = agreement(dup_ids, dup_pairs, [r["prompt_id"] for r in dup_rows], n)
            print(f"| {name} | {w[0]:.1%} | {a[0]:.1%} | {w[1]:.1%} | {a[1]:.1%} | {dd[0]:.1%} |", flush=True)
    finally:
        shutdown_engine(llm)


if __name__ == "__main__":
    main()

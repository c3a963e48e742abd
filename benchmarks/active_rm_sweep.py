"""Active reward modelling on the toy task: every strategy x pool x seed through
recipes/active_rm.py, then a markdown table of 1 - Spearman / best-of-N per round.

    python benchmarks/active_rm_sweep.py --out /tmp/arm_bench [--seeds 2] [--pools cross_prompt,in_prompt]

One run directory per seed (runs share its sampled and embedded responses); a finished
strategy is resumed from its stages, so rerunning only prints the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("random", "dopt", "pa_dopt", "xtx", "entropy", "maxdiff", "coreset", "batchbald")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run.output_dir of the sweep")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--pools", default="cross_prompt,in_prompt")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("overrides", nargs="*", help="extra section.key=value for the recipe")
    a = p.parse_args()
    pools, strategies = a.pools.split(","), a.strategies.split(",")
    for seed in range(a.seeds):
        for pool in pools:
            for s in strategies:
                cmd = [sys.executable, "recipes/active_rm.py", "--config", "recipes/configs/toy/active_rm.yaml", f"run.output_dir={a.out}",
                       f"run.name=toy_seed{seed}", f"run.seed={seed}", f"arm.strategy={s}", f"arm.pool={pool}", *a.overrides]
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(done.stdout[-2000:] + done.stderr[-4000:])
    for pool in pools:
        res = {s: [json.loads((Path(a.out) / f"toy_seed{seed}" / f"arm_{s}_{pool}.json").read_text()) for seed in range(a.seeds)] for s in strategies}
        first = res[strategies[0]][0]
        labels = [r["labels"] for r in first["rounds"]]
        oracle = np.mean([r["oracle_best_of_n"] for r in res[strategies[0]]])
        rnd = np.mean([r["random_best_of_n"] for r in res[strategies[0]]])
        print(f"\n{pool} pool (size {first['pool_size']}), mean of {a.seeds} seed(s); cells 1-Spearman / best-of-N; "
              f"oracle best-of-N {oracle:.3f}, a random response {rnd:.3f}\n")
        print("| strategy | " + " | ".join(str(n) for n in labels) + " |")
        print("|---" * (len(labels) + 1) + "|")
        for s in strategies:
            m = np.mean([[c["one_minus_spearman"] for c in r["rounds"]] for r in res[s]], axis=0)
            b = np.mean([[c["best_of_n"] for c in r["rounds"]] for r in res[s]], axis=0)
            print(f"| {s} | " + " | ".join(f"{x:.3f}/{y:.3f}" for x, y in zip(m, b, strict=True)) + " |")


if __name__ == "__main__":
    main()

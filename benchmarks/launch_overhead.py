"""Wall time of one tiny toy iteration run directly, with W&B (offline), and through Slurm.

    ITERDPO_CACHE=/tmp/tcache python benchmarks/launch_overhead.py [--repeats 2]

Needs a running Slurm cluster for the Slurm rows (.ci/slurm.sh). Prints a markdown table;
the machine's load average is printed too, because the numbers depend on it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["run.iterations=1", "data.prompts_per_iteration=16", "sample.n=2", "evaluate.num_prompts=16", "train.epochs=1"]


def timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.time() - start


def requeue_gap(out: Path) -> float:
    """Seconds from `scontrol requeue` of a running job to its script starting again."""
    script = out / "sleep.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --requeue\n#SBATCH --open-mode=append\n#SBATCH --output={out}/sleep.out\n"
                      "echo start $(date +%s.%N)\nsleep 5\n")
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    while "start" not in (out / "sleep.out").read_text() if (out / "sleep.out").exists() else True:
        time.sleep(0.1)
    t0 = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True)
    while len(re.findall(r"^start (\S+)", (out / "sleep.out").read_text(), flags=re.M)) < 2:
        time.sleep(0.1)
    return float(re.findall(r"^start (\S+)", (out / "sleep.out").read_text(), flags=re.M)[1]) - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    py = sys.executable
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for i in range(args.repeats):
            base = [f"run.output_dir={out}", *TINY]
            rows.setdefault("iterdpo run (direct)", []).append(timed([py, "-m", "iterdpo", "run", *base, f"run.name=d{i}"]))
            rows.setdefault("iterdpo run, report_to=wandb (offline)", []).append(
                timed([py, "-m", "iterdpo", "run", *base, f"run.name=w{i}", "run.report_to=wandb"], {"WANDB_MODE": "offline"}))
            rows.setdefault("iterdpo slurm submit --wait (python launcher)", []).append(
                timed([py, "-m", "iterdpo", "slurm", "submit", "/dev/null", *base, f"run.name=s{i}", "--wait"]))
            rows.setdefault("iterdpo slurm submit --wait (srun + accelerate launch)", []).append(
                timed([py, "-m", "iterdpo", "slurm", "submit", "/dev/null", *base, f"run.name=a{i}", "--launcher", "accelerate", "--wait"]))
            (out / f"rq{i}").mkdir()
            rows.setdefault("scontrol requeue -> job running again", []).append(requeue_gap(out / f"rq{i}"))
    print(f"load average (1/5/15 min) at the end: {os.getloadavg()}; cpus: {os.cpu_count()}\n")
    print(f"| what | seconds (median of {args.repeats}) | all |")
    print("|---|---|---|")
    for name, ts in rows.items():
        print(f"| {name} | {statistics.median(ts):.1f} | {', '.join(f'{t:.1f}' for t in ts)} |")


if __name__ == "__main__":
    main()

"""How often the labels a run trained on agree with the gold reward, per strategy (issue #13:
001's gold-reward-model labels were near noise against the metric).

    python benchmarks/seeds/label_agreement.py OUT [--papers 001,ctl,002]

For every run folder ``OUT/runs/<run_id>`` of the given papers: over the pairs of every
iteration's annotate stage (``pairs.parquet``), the share whose chosen response has the higher
gold reward (gold ties left out), and the share whose chosen response has more words.
Prints one markdown row per (paper, setting, strategy): mean ± standard error over seeds.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def agreement(run_dir: Path, gold) -> tuple[float, float, int]:
    """(gold agreement, chosen-longer share, pairs) over every iteration's labelled pairs."""
    from iterdpo import records

    agree, longer, n = [], [], 0
    for path in sorted(run_dir.glob("iter_*/annotate/pairs.parquet")):
        for r in records.read_table(path).to_pylist():
            c, j = gold(r["prompt"], r["chosen"]), gold(r["prompt"], r["rejected"])
            if c != j:
                agree.append(c > j)
            longer.append(len(r["chosen"].split()) > len(r["rejected"].split()))
            n += 1
    nan = math.nan
    return (sum(agree) / len(agree) if agree else nan), (sum(longer) / len(longer) if longer else nan), n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--papers", default="001,ctl,002")
    a = p.parse_args()
    from iterdpo.annotation.gold import gold_reward_fn

    gold = gold_reward_fn("world")
    groups: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for run_dir in sorted(Path(a.out, "runs").iterdir()):
        m = re.fullmatch(r"(\w+)-(.+)-s(\d+)", run_dir.name)
        if not m or m.group(1) not in a.papers.split(","):
            continue
        groups[m.group(1) + " " + m.group(2)].append(agreement(run_dir, gold))

    def mse(xs: list[float]) -> str:
        xs = [x for x in xs if math.isfinite(x)]
        if len(xs) < 2:
            return f"{xs[0]:.3f}" if xs else "n/a"
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        return f"{mean:.3f} ± {sd / math.sqrt(len(xs)):.3f}"

    print("| run | seeds | pairs per run | labels agreeing with gold | chosen longer |")
    print("|---|---|---|---|---|")
    for name, rows in sorted(groups.items()):
        print(f"| {name} | {len(rows)} | {sum(r[2] for r in rows) / len(rows):.0f} | {mse([r[0] for r in rows])} | {mse([r[1] for r in rows])} |")


if __name__ == "__main__":
    main()

"""Paired gold-reward difference of an iteration's policy against the initial model.

Evaluation answers every held-out prompt once with pi_k (``iter_k/eval_responses``) and
once with pi_0 (``baseline``), with the same sampling seed. Per prompt i,
``d_i = gold(x_i, y_i^policy) - gold(x_i, y_i^baseline)``; the report is the mean of d
with its paired 95 % t-interval (:mod:`iterdpo.stats`; the prompt-to-prompt spread of gold
cancels), next to both mean lengths in tokens and words
(the gold reward can be raised by longer answers; see :mod:`iterdpo.real.reviews`), and how often
each iteration's annotator agreed with gold on the pairs it labelled.

    python -m iterdpo.real.paired runs/iterative_dpo_smollm2 [--iteration K] [--gold reviews]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def gold_difference(run_dir: str | Path, iteration: int, gold: str) -> dict:
    """Paired gold gain of iteration ``iteration``'s evaluation answers over the baseline's.

    Answers pair by completion id (sample j of a prompt on both sides); the gain, its 95 %
    interval and detectable effect are :func:`iterdpo.evaluation.gain`'s (prompts as the
    unit), the same numbers evaluation stores as ``gold_reward_gain`` in ``metrics.json``.
    """
    from iterdpo import records
    from iterdpo.annotation.gold import gold_reward_fn
    from iterdpo.evaluation import gain

    run_dir = Path(run_dir)
    fn = gold_reward_fn(gold)
    mine = records.read_table(run_dir / f"iter_{iteration}" / "eval_responses" / "completions.parquet").to_pylist()
    base = records.rows_by(records.read_table(run_dir / "baseline" / "completions.parquet"), "completion_id")
    missing = [r["completion_id"] for r in mine if r["completion_id"] not in base]
    if missing:
        raise ValueError(f"{run_dir}: {len(missing)} evaluation answers have no baseline answer (e.g. {missing[0]})")
    theirs = [base[r["completion_id"]] for r in mine]
    g_pol = [fn(r["prompt"], r["completion"]) for r in mine]
    g_base = [fn(b["prompt"], b["completion"]) for b in theirs]
    diffs = [a - b for a, b in zip(g_pol, g_base, strict=True)]
    out = {"iteration": iteration, "gold": gold, **gain([r["prompt_id"] for r in mine], g_pol, g_base, "gold_reward_gain")}
    out.update({
        "mean_gold_policy": statistics.fmean(g_pol), "mean_gold_baseline": statistics.fmean(g_base),
        "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs),
        "mean_tokens_policy": statistics.fmean(r["num_tokens"] for r in mine),
        "mean_tokens_baseline": statistics.fmean(b["num_tokens"] for b in theirs),
        "mean_words_policy": statistics.fmean(len(r["completion"].split()) for r in mine),
        "mean_words_baseline": statistics.fmean(len(b["completion"].split()) for b in theirs),
    })
    return out


def annotator_agreement(run_dir: str | Path, iteration: int, gold: str) -> dict:
    """How often the iteration's annotator chose what gold prefers, on its own labelled pairs
    (``iter_k/annotate/pairs.parquet``): agreement = share of pairs with gold(chosen) > gold(rejected),
    gold ties counted apart."""
    from iterdpo import records
    from iterdpo.annotation.gold import gold_reward_fn

    fn = gold_reward_fn(gold)
    pairs = records.read_table(Path(run_dir) / f"iter_{iteration}" / "annotate" / "pairs.parquet").to_pylist()
    d = [fn(r["prompt"], r["chosen"]) - fn(r["prompt"], r["rejected"]) for r in pairs]
    decided = [x for x in d if x != 0]
    return {"iteration": iteration, "pairs": len(d), "gold_ties": len(d) - len(decided),
            "agreement_with_gold": sum(x > 0 for x in decided) / len(decided) if decided else math.nan}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iterdpo.real.paired", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--iteration", "-k", type=int, default=None, help="default: the last evaluated iteration")
    p.add_argument("--gold", default=None, help="gold reward name (default: annotate.gold of the run's config.yaml)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    gold = args.gold
    if gold is None:
        import yaml

        gold = (yaml.safe_load((run_dir / "config.yaml").read_text()).get("annotate") or {}).get("gold")
        if gold is None:
            print(f"{run_dir}/config.yaml: annotate.gold is not set; pass --gold", file=sys.stderr)
            return 2
    k = args.iteration
    if k is None:
        done = sorted(int(d.name[5:]) for d in run_dir.glob("iter_*") if (d / "eval_responses" / "completions.parquet").exists())
        if not done:
            print(f"{run_dir}: no evaluated iteration", file=sys.stderr)
            return 2
        k = done[-1]
    out = gold_difference(run_dir, k, gold)
    out["annotator_agreement"] = [annotator_agreement(run_dir, i, gold) for i in range(1, k + 1)
                                  if (run_dir / f"iter_{i}" / "annotate" / "pairs.parquet").exists()]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation: the iteration's policy against a baseline on held-out prompts.

Both policies answer every held-out prompt once with the same sampling seed; a judge
(any :class:`iterdpo.annotation.Annotator`) compares the two answers. Win rate counts a
tie as 0.5. When a gold reward function is known (the toy task) its mean is reported too.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from iterdpo import records


def compare(
    policy: pa.Table,
    baseline: pa.Table,
    judge,
    gold: Callable[[str, str], float] | None = None,
) -> dict:
    """Win rate of ``policy`` over ``baseline`` (COMPLETIONS tables, one answer per prompt)."""
    base = records.rows_by(baseline, "prompt_id")
    mine = [r for r in policy.to_pylist() if r["prompt_id"] in base]
    if not mine:
        raise ValueError("policy and baseline answered no common prompt")
    theirs = [base[r["prompt_id"]] for r in mine]
    verdicts = judge.compare([r["prompt"] for r in mine], [r["completion"] for r in mine], [r["completion"] for r in theirs])
    scored = [v for v in verdicts if v is not None]
    wins = sum(1.0 if v > 0 else 0.5 if v == 0 else 0.0 for v in scored)
    out = {
        "prompts": len(mine),
        "win_rate": wins / len(scored) if scored else float("nan"),
        "mean_length": sum(r["num_tokens"] for r in mine) / len(mine),
        "baseline_mean_length": sum(r["num_tokens"] for r in theirs) / len(theirs),
    }
    if gold is not None:
        out["mean_gold_reward"] = sum(gold(r["prompt"], r["completion"]) for r in mine) / len(mine)
        out["baseline_mean_gold_reward"] = sum(gold(r["prompt"], r["completion"]) for r in theirs) / len(theirs)
    return out

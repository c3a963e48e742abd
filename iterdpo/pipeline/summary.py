"""summary.json: one row per finished iteration, from the stages' manifests."""

from __future__ import annotations

import json
import os

from iterdpo.pipeline.context import Run

STAGES = ("sample", "score", "select", "annotate", "train", "evaluate")


def summarize(run: Run) -> dict:
    """summary.json from the manifests of finished iterations."""
    its = []
    for k in range(1, run.cfg.run.iterations + 1):
        ms = {s: run.rd.manifest(run.rd.stage(k, s)) for s in (*STAGES, "eval_responses")}
        if any(m is None for m in ms.values()):
            break
        ev = ms["evaluate"]["stats"]
        its.append(
            {
                "iteration": k,
                "pairs_trained": ms["train"]["stats"]["pairs"],
                "mean_abs_margin": ms["select"]["stats"]["mean_abs_margin"],
                "train_loss": ms["train"]["stats"]["train_loss"],
                "gold_win_rate_vs_sft": ev["win_rate"],
                "mean_gold_reward": ev.get("mean_gold_reward"),
                "gold_reward_gain": ev.get("gold_reward_gain"),
                "gold_reward_gain_ci95": ev.get("gold_reward_gain_ci95"),
                "mean_length": ev["mean_length"],
                "mean_reward": ev.get("mean_reward"),
                "kl_to_reference": ev.get("kl_to_reference"),
                "mean_implicit_reward": ev.get("mean_implicit_reward"),
                "implicit_ranking_accuracy": ev.get("implicit_ranking_accuracy"),
                "wall_seconds": round(sum(m["wall_seconds"] for m in ms.values()), 2),
            }
        )
    summary = {"run": run.cfg.run.name, "iterations": its}
    if its:
        summary["baseline_mean_gold_reward"] = run.stats(1, "evaluate").get("baseline_mean_gold_reward")
    return summary


def format_table(summary: dict) -> str:
    cols = ["iteration", "pairs_trained", "mean_abs_margin", "train_loss", "gold_win_rate_vs_sft", "mean_gold_reward", "mean_length", "wall_seconds"]
    lines = ["  ".join(f"{c:>12}" if i else c for i, c in enumerate(cols))]
    for it in summary["iterations"]:
        cells = []
        for c in cols:
            v = it[c]
            cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("  ".join(f"{v:>12}" if i else f"{v:>9}" for i, v in enumerate(cells)))
    return "\n".join(lines)


def write_summary(run: Run) -> dict:
    summary = summarize(run)
    path = run.rd.root / "summary.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    return summary

"""The harness's report: results.csv, summary.csv, results.md and one PNG per paper.

- ``results.csv``: one row per (run, metric): paper, setting, strategy, seed, metric, value, run_id.
- ``summary.csv``: one row per (paper, setting, strategy, metric): mean, se, n over seeds,
  with se = sd / sqrt(n) (sample sd, ddof 1; empty for n = 1).
- ``results.md``: the same as tables (cells ``mean ± se``), the SeRA grid also pivoted
  (loss x method rows, noise columns), per comparison the strategies ranked by its
  main metric, and the verdicts on ``claims.yaml`` (paired tests over seeds, Holm,
  power lines, the positive control: ``verdicts.py``).
- ``<paper>.png``: bars of the main metric (± se) and curves over iterations / rounds.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import verdicts
from grid import (
    APL_STRATEGIES,
    ARM_CEILING,
    ARM_POOLS,
    ARM_STRATEGIES,
    LOSSES,
    MARGIN_STRATEGIES,
    NOISE,
    SCHEDULES,
    SERA_METHODS,
    Spec,
    reported_rows,
)

TITLES = {
    "000": "000 active reward modelling (Shen et al.): reward model after the last round",
    "001": "001 margin selection in iterative DPO (Yang et al.): policy after the last iteration",
    "002": "002 active preference learning (Muldrew et al.): policy after the last acquisition step",
    "003": "003 SeRA (Ko et al.): policy after the last iteration",
    "ctl": "positive control: random selection with oracle (gold) labels, iterative DPO",
}
# columns of each paper's tables; the first is the main metric (ranked; +1 higher is better, -1 lower)
METRICS = {
    "000": [("one_minus_spearman", -1), ("best_of_n", 1)],
    "001": [("gold_reward_gain", 1), ("gold_win_rate_vs_sft", 1), ("mean_gold_reward", 1), ("mean_length", 0), ("pairs_trained", 0)],
    "002": [("gold_reward_gain", 1), ("gold_win_rate_vs_sft", 1), ("mean_gold_reward", 1), ("mean_length", 0), ("pairs_trained", 0)],
    "003": [("gold_reward_gain", 1), ("gold_win_rate_vs_sft", 1), ("dataset_implicit_reward_length_pearson", 0),
            ("sft_implicit_reward_length_pearson", 0), ("offline_label_error", 0), ("kept_offline_label_error", 0),
            ("bootstrap_label_accuracy", 0), ("bootstrap_chosen_longer", 0), ("mean_length", 0)],
    "ctl": [("gold_reward_gain", 1), ("gold_win_rate_vs_sft", 1), ("mean_gold_reward", 1), ("mean_length", 0)],
}
ORDER = {"000": (*ARM_STRATEGIES, ARM_CEILING), "001": (*MARGIN_STRATEGIES, *SCHEDULES), "002": APL_STRATEGIES, "003": SERA_METHODS, "ctl": ("random-oracle",)}


def mean_se(xs: list[float]) -> tuple[float, float, int]:
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(xs) / n
    if n == 1:
        return m, math.nan, 1
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, sd / math.sqrt(n), n


def fmt(m: float, se: float) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{m:.3f}" if math.isnan(se) else f"{m:.3f} ± {se:.3f}"


def load(specs: list[Spec], records_dir: Path) -> tuple[list[dict], list[str]]:
    """(records of the grid's finished runs, run ids with no record)."""
    found, missing = [], []
    for s in specs:
        path = records_dir / f"{s.run_id}.json"
        (found.append(json.loads(path.read_text())) if path.exists() else missing.append(s.run_id))
    return found, missing


def tidy(specs: list[Spec], recs: list[dict]) -> list[dict]:
    """Long rows (paper, setting, strategy, seed, metric, value, run_id); finite values only."""
    by_id = {s.run_id: s for s in specs}
    rows = []
    for r in recs:
        for setting, strategy in reported_rows(by_id[r["run_id"]]):
            for metric, value in r["metrics"].items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    rows.append({"paper": r["paper"], "setting": setting, "strategy": strategy, "seed": r["seed"],
                                 "metric": metric, "value": float(value), "run_id": r["run_id"]})
    return rows


def aggregate(rows: list[dict]) -> dict[tuple, tuple[float, float, int]]:
    """(paper, setting, strategy, metric) -> (mean, se, n) over seeds."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[(r["paper"], r["setting"], r["strategy"], r["metric"])].append(r["value"])
    return {k: mean_se(v) for k, v in groups.items()}


def _settings(agg: dict, paper: str) -> list[str]:
    seen = []
    for p, setting, _, _ in agg:
        if p == paper and setting not in seen:
            seen.append(setting)
    if paper == "003":  # loss-major, noise-minor
        return [f"{loss} noise={n}" for loss in LOSSES for n in NOISE if f"{loss} noise={n}" in seen]
    return sorted(seen)


def _strategies(agg: dict, paper: str, setting: str) -> list[str]:
    present = {s for p, st, s, _ in agg if p == paper and st == setting}
    return [s for s in ORDER[paper] if s in present]


def ranking(agg: dict, paper: str, setting: str) -> str:
    metric, sign = METRICS[paper][0]
    cells = [(s, agg[(paper, setting, s, metric)][0]) for s in _strategies(agg, paper, setting) if (paper, setting, s, metric) in agg]
    cells.sort(key=lambda c: -sign * c[1])
    return " > ".join(f"{s} {v:.3f}" for s, v in cells)


def markdown(agg: dict, rows: list[dict], meta: dict, missing: list[str]) -> str:
    lines = ["# Seeds harness results", ""]
    extra = f", extra overrides `{' '.join(meta['extra'])}`" if meta.get("extra") else ""
    lines.append(f"size `{meta['size']}`, task `{meta['world']}`{extra}, seeds {meta['seeds']}, {meta['workers']} worker(s); "
                 f"{meta['runs']} runs in the grid, {meta['ran_now']} run by the last invocation in {meta['wall_seconds']:.0f} s wall "
                 "(task build included). Cells: mean ± standard error over seeds (sd / sqrt(n)).")
    lines.append("")
    if meta.get("cpu_seconds") is not None:
        head = (f"Cost of this invocation: {meta['cpu_seconds']:.0f} CPU-s (harness + workers), load average {meta.get('load_average_start', float('nan')):.1f} "
                f"at start and {meta.get('load_average_end', float('nan')):.1f} at end; " if meta.get("ran_now") else "Report only (no run by this invocation); ")
        lines += [head + "runs' own CPU-s by paper: "
                  + ", ".join(f"{k} {v['sum']:.0f} ({v['runs']} runs, {v['mean']:.0f} each)" for k, v in meta.get("run_cpu_seconds_by_paper", {}).items())
                  + f". Claims file sha1 {meta.get('claims_sha1')}.", ""]
    if meta.get("warm_start"):
        w = meta["warm_start"]
        lines += [f"pi_0 of 001 and the control (offline-DPO warm start, {sum(w['pairs'])} pairs): gold gain over the SFT model "
                  f"{w['gold_reward_gain']:+.4f} {w.get('gold_reward_gain_ci95')}, win rate {w['win_rate']:.3f}, mean length "
                  f"{w['mean_length']:.1f} (SFT {w['baseline_mean_length']:.1f}).", ""]
    if missing:
        lines += [f"**{len(missing)} run(s) missing (failed or not run):** " + ", ".join(missing), ""]
    for paper in sorted({k[0] for k in agg}):
        cols = METRICS[paper]
        lines += [f"## {TITLES[paper]}", ""]
        for setting in _settings(agg, paper):
            ns = {agg.get((paper, setting, s, cols[0][0]), (0, 0, 0))[2] for s in _strategies(agg, paper, setting)}
            n = f"{max(ns)} seeds" if len(ns) == 1 else f"{min(ns)}-{max(ns)} seeds by strategy"  # 001's constant row: always-smallest's seeds
            lines += [f"### {setting} (n = {n})", "", "| strategy | " + " | ".join(c for c, _ in cols) + " |",
                      "|---" * (len(cols) + 1) + "|"]
            for s in _strategies(agg, paper, setting):
                cells = [fmt(*agg[(paper, setting, s, c)][:2]) if (paper, setting, s, c) in agg else "n/a" for c, _ in cols]
                lines.append(f"| {s} | " + " | ".join(cells) + " |")
            lines += ["", f"ranked by {cols[0][0]} ({'higher' if cols[0][1] > 0 else 'lower'} is better): {ranking(agg, paper, setting)}", ""]
            if paper == "000":  # the second metric ranks too
                m2 = [(s, agg[(paper, setting, s, "best_of_n")][0]) for s in _strategies(agg, paper, setting) if (paper, setting, s, "best_of_n") in agg]
                lines += ["ranked by best_of_n (higher is better): " + " > ".join(f"{s} {v:.3f}" for s, v in sorted(m2, key=lambda c: -c[1])), ""]
        if paper == "003":
            noise = [n for n in NOISE if any(k[0] == "003" and k[1].endswith(f"noise={n}") for k in agg)]
            for metric, _ in cols:
                lines += [f"### {metric}: loss x method by swapped-label share", "",
                          "| loss | method | " + " | ".join(f"noise {n}" for n in noise) + " |", "|---|---" + "|---" * len(noise) + "|"]
                for loss in LOSSES:
                    for method in SERA_METHODS:
                        cells = [fmt(*agg[k][:2]) if (k := ("003", f"{loss} noise={n}", method, metric)) in agg else "n/a" for n in noise]
                        lines.append(f"| {loss} | {method} | " + " | ".join(cells) + " |")
                lines.append("")
    lines += ["## Verdicts on the pre-registered claims", "", *verdicts.markdown(rows, verdicts.load_claims())]
    return "\n".join(lines) + "\n"


def _curves(recs: list[dict], paper: str, setting: str, key: str, x: str) -> dict[str, tuple[list, list]]:
    """strategy -> (x values, mean y over seeds) of the per-iteration / per-round curve."""
    acc: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for r in recs:
        if r["paper"] == paper and r["setting"] == setting:
            for point in r["curve"]:
                if point.get(key) is not None:
                    acc[r["strategy"]][point[x]].append(point[key])
    return {s: (sorted(v), [sum(v[i]) / len(v[i]) for i in sorted(v)]) for s, v in acc.items()}


def _bars(ax, agg: dict, paper: str, setting: str, metric: str, title: str) -> None:
    names = [s for s in _strategies(agg, paper, setting) if (paper, setting, s, metric) in agg]
    means = [agg[(paper, setting, s, metric)][0] for s in names]
    ses = [0 if math.isnan(e := agg[(paper, setting, s, metric)][1]) else e for s in names]
    ax.bar(range(len(names)), means, yerr=ses, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    if metric == "gold_win_rate_vs_sft":
        ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)  # parity with the SFT model
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(metric, fontsize=8)


def plots(agg: dict, recs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    papers = {r["paper"] for r in recs}
    if "001" in papers:
        fig, axes = plt.subplots(2, 2, figsize=(9, 7))
        _bars(axes[0, 0], agg, "001", "margin", "gold_win_rate_vs_sft", "margin selection: gold win rate vs SFT")
        _bars(axes[0, 1], agg, "001", "schedule", "gold_win_rate_vs_sft", "budget schedule (always-smallest)")
        for ax, setting in ((axes[1, 0], "margin"), (axes[1, 1], "schedule")):
            for s, (xs, ys) in _curves(recs, "001", setting, "mean_gold_reward", "iteration").items():
                ax.plot(xs, ys, marker="o", label=s)
            ax.set_xlabel("iteration")
            ax.set_ylabel("mean gold reward (mean over seeds)", fontsize=8)
            ax.legend(fontsize=7)
        if ("001", "margin", "smallest") in {(p, st, s) for p, st, s, _ in agg}:  # the constant schedule is the same runs
            for s, (xs, ys) in _curves(recs, "001", "margin", "mean_gold_reward", "iteration").items():
                if s == "smallest":
                    axes[1, 1].plot(xs, ys, marker="o", label="constant")
            axes[1, 1].legend(fontsize=7)
        written.append(_save(fig, out / "001_margin.png"))
    if "002" in papers:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        _bars(axes[0], agg, "002", "acquisition", "gold_win_rate_vs_sft", "APL: gold win rate vs SFT after the last step")
        for s, (xs, ys) in _curves(recs, "002", "acquisition", "gold_win_rate_vs_sft", "iteration").items():
            axes[1].plot(xs, ys, marker="o", label=s)
        axes[1].axhline(0.5, color="gray", linestyle=":", linewidth=1)
        axes[1].set_xlabel("acquisition step")
        axes[1].set_ylabel("gold win rate vs SFT (mean over seeds)", fontsize=8)
        axes[1].legend(fontsize=7)
        written.append(_save(fig, out / "002_apl.png"))
    if "000" in papers:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
        for j, pool in enumerate(ARM_POOLS):
            for i, metric in enumerate(("one_minus_spearman", "best_of_n")):
                for s, (xs, ys) in _curves(recs, "000", pool, metric, "labels").items():
                    axes[i, j].plot(xs, ys, marker="o", label=s, linestyle="-" if s in ("dopt", "pa_dopt", "random") else "--")
                axes[i, j].set_title(f"{pool}: {metric}", fontsize=9)
                axes[i, j].set_xlabel("labels")
        axes[0, 0].legend(fontsize=7, ncol=2)
        written.append(_save(fig, out / "000_active_rm.png"))
    if "003" in papers:
        metrics = [("gold_win_rate_vs_sft", "gold win rate vs SFT"), ("sft_implicit_reward_length_pearson", "Pearson(implicit reward vs SFT, length)"),
                   ("mean_length", "mean response length (tokens)")]
        fig, axes = plt.subplots(len(metrics), len(LOSSES), figsize=(13, 9), squeeze=False)
        width = 0.8 / len(SERA_METHODS)
        for i, (metric, label) in enumerate(metrics):
            for j, loss in enumerate(LOSSES):
                ax = axes[i, j]
                for m_i, method in enumerate(SERA_METHODS):
                    keys = [("003", f"{loss} noise={n}", method, metric) for n in NOISE]
                    means = [agg[k][0] if k in agg else math.nan for k in keys]
                    ses = [0 if k not in agg or math.isnan(agg[k][1]) else agg[k][1] for k in keys]
                    ax.bar([x + (m_i - 1) * width for x in range(len(NOISE))], means, width, yerr=ses, capsize=2, label=method)
                if metric == "gold_win_rate_vs_sft":
                    ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)  # parity with the SFT model
                ax.set_xticks(range(len(NOISE)), [f"noise {n}" for n in NOISE], fontsize=8)
                ax.set_title(f"{loss}: {label}", fontsize=8)
        axes[0, 0].legend(fontsize=7)
        written.append(_save(fig, out / "003_sera.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(specs: list[Spec], records_dir: Path, out: Path, meta: dict) -> dict:
    """Write every results file into ``out``; returns the aggregate table."""
    out.mkdir(parents=True, exist_ok=True)
    recs, missing = load(specs, records_dir)
    rows = tidy(specs, recs)
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["paper", "setting", "strategy", "seed", "metric", "value", "run_id"])
        w.writeheader()
        w.writerows(rows)
    agg = aggregate(rows)
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["paper", "setting", "strategy", "metric", "mean", "se", "n"])
        for (p, st, s, m), (mean, se, n) in sorted(agg.items()):
            w.writerow([p, st, s, m, f"{mean:.6g}", "" if math.isnan(se) else f"{se:.6g}", n])
    walls = [r["wall_seconds"] for r in recs]
    cpus = [r.get("cpu_seconds") for r in recs if r.get("cpu_seconds") is not None]
    meta = {**meta, "run_wall_seconds_sum": round(sum(walls), 1), "run_cpu_seconds_sum": round(sum(cpus), 1),
            "claims_sha1": verdicts.load_claims()["sha1"]}
    costs: dict[str, list[float]] = defaultdict(list)  # per-run cost by paper: what sizes a grid
    for r in recs:
        if r.get("cpu_seconds") is not None:
            costs[r["paper"]].append(r["cpu_seconds"])
    meta["run_cpu_seconds_by_paper"] = {k: {"runs": len(v), "sum": round(sum(v), 1), "mean": round(sum(v) / len(v), 1)} for k, v in sorted(costs.items())}
    (out / "results.md").write_text(markdown(agg, rows, meta, missing))
    (out / "meta.json").write_text(json.dumps({**meta, "missing": missing}, indent=1))
    plots(agg, recs, out)
    return agg

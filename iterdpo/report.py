"""``iterdpo report RUN_DIR``: an HTML page of plots over a run's finished iterations.

Writes ``RUN_DIR/report/index.html`` and its PNGs (matplotlib, Agg backend), from files
the stages already wrote:

- ``summary.json``: win rate vs the initial model, mean gold / reward-model / implicit
  reward and the KL estimate, per iteration;
- ``iter_k/select/candidates.parquet`` (or SeRA's ``sera_pairs.parquet``) + ``iter_k/score/scored.parquet``: histograms of the
  |margin| of the *selected* pairs vs the *passed-over* ones (every other in-prompt pair of
  the scored responses, margin as ``select.margin`` defines it: summed or per-token
  implicit reward); implicit reward vs response length (scatter, with Pearson/Spearman);
- Jaccard overlap |S_i & S_j| / |S_i | S_j| of the selected prompt ids of iterations i, j.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import time
from pathlib import Path


def _iterations(root: Path) -> list[int]:
    ks = []
    for d in root.glob("iter_*"):
        try:
            ks.append(int(d.name.split("_", 1)[1]))
        except ValueError:
            continue
    return sorted(ks)


def _margin_column(root: Path) -> str:
    cfg = root / "config.yaml"
    if cfg.exists():
        import yaml

        data = yaml.safe_load(cfg.read_text()) or {}
        if (data.get("select") or {}).get("margin") == "length":
            return "reward_norm"
    return "reward"


def _scored(root: Path, k: int) -> list[dict] | None:
    from iterdpo.pipeline import artifacts

    d = root / f"iter_{k}" / "score"
    return artifacts.read(d, "scored").to_pylist() if (d / "manifest.json").exists() else None


def _selected(root: Path, k: int) -> list[dict] | None:
    """The select stage's pairs as prompt_id, a_id, b_id, margin: candidates or SeRA's oriented pairs."""
    from iterdpo.pipeline import artifacts

    pairs = artifacts.selected_pairs(root / f"iter_{k}" / "select")
    return None if pairs is None else pairs.to_pylist()


def margins(scored: list[dict], selected: list[dict], column: str) -> tuple[list[float], list[float]]:
    """|r(a) - r(b)| of the selected pairs and of every other in-prompt pair."""
    by_id = {r["completion_id"]: r for r in scored}
    chosen = {tuple(sorted((c["a_id"], c["b_id"]))) for c in selected}
    sel = [abs(by_id[a][column] - by_id[b][column]) for a, b in chosen if a in by_id and b in by_id]
    by_prompt: dict[str, list[str]] = {}
    for r in scored:
        by_prompt.setdefault(r["prompt_id"], []).append(r["completion_id"])
    passed = [
        abs(by_id[a][column] - by_id[b][column])
        for ids in by_prompt.values()
        for a, b in itertools.combinations(sorted(ids), 2)
        if (a, b) not in chosen
    ]
    return sel, passed


def jaccard(sets: list[set]) -> list[list[float]]:
    """J[i][j] = |S_i & S_j| / |S_i | S_j| (1 for two empty sets)."""
    return [[len(a & b) / len(a | b) if a | b else 1.0 for b in sets] for a in sets]


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else html.escape(str(v))


def write_report(run_dir: str | Path) -> Path:
    """Render the report; returns the path of index.html."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iterdpo.evaluation import pearson, spearman

    root = Path(run_dir)
    if not root.is_dir():
        from iterdpo.records import RecordError

        raise RecordError(f"{root}: not a run directory")
    out = root / "report"
    out.mkdir(exist_ok=True)
    summary_file = root / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {"run": root.name, "iterations": []}
    its = summary.get("iterations", [])
    figures: list[tuple[str, str, str]] = []  # (file, title, caption)

    def save(fig, name: str, title: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        figures.append((name, title, caption))

    # 1. win rate and rewards per iteration
    if its:
        x = [it["iteration"] for it in its]
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
        wr = [it.get("gold_win_rate_vs_sft") for it in its]
        ax[0].plot(x, [w if w is not None else math.nan for w in wr], "o-", color="C0")
        ax[0].axhline(0.5, ls="--", color="grey", lw=1)
        ax[0].set(xlabel="iteration", ylabel="win rate vs initial model", ylim=(0, 1), xticks=x, title="Win rate")
        for key, label, c in [("mean_gold_reward", "gold reward", "C1"), ("mean_reward", "reward model", "C2"),
                              ("mean_implicit_reward", "implicit reward", "C3"), ("kl_to_reference", "KL to reference", "C4")]:
            ys = [it.get(key) for it in its]
            if any(y is not None for y in ys):
                ax[1].plot(x, [y if y is not None else math.nan for y in ys], "o-", color=c, label=label)
        if summary.get("baseline_mean_gold_reward") is not None:
            ax[1].axhline(summary["baseline_mean_gold_reward"], ls="--", color="C1", lw=1, label="initial model (gold)")
        ax[1].set(xlabel="iteration", xticks=x, title="Reward and KL of held-out answers")
        ax[1].legend(fontsize=8)
        save(fig, "progress.png", "Win rate and reward per iteration",
             "Held-out prompts, policy of iteration k vs the initial model (ties count 0.5).")

    ks = _iterations(root)
    column = _margin_column(root)
    scored_by_k = {k: _scored(root, k) for k in ks}
    selected_by_k = {k: _selected(root, k) for k in ks}
    ks_sel = [k for k in ks if scored_by_k[k] is not None and selected_by_k[k] is not None]

    # 2. margins of selected vs passed-over pairs
    if ks_sel:
        fig, axes = plt.subplots(1, len(ks_sel), figsize=(3.6 * len(ks_sel), 3.2), squeeze=False)
        for ax, k in zip(axes[0], ks_sel, strict=True):
            sel, passed = margins(scored_by_k[k], selected_by_k[k], column)
            top = max(sel + passed + [0.0])
            if top < 1e-9:  # iteration 1 with reference = policy: every implicit reward is 0
                ax.text(0.5, 0.5, f"all {len(sel) + len(passed)} margins are 0\n(the policy is its own reference)",
                        ha="center", va="center", transform=ax.transAxes)
                ax.set(title=f"iteration {k}", xlabel=f"|margin| ({column})", xticks=[], yticks=[])
                continue
            bins = [top * i / 30 for i in range(31)]
            ax.hist(passed, bins=bins, alpha=0.6, label=f"passed over ({len(passed)})", color="C7", density=True)
            ax.hist(sel, bins=bins, alpha=0.6, label=f"selected ({len(sel)})", color="C0", density=True)
            ax.set(title=f"iteration {k}", xlabel=f"|margin| ({column})")
            ax.legend(fontsize=7)
        save(fig, "margins.png", "Margins of selected vs passed-over pairs",
             "Density of |r(a) - r(b)| of the pairs selection kept and of every other in-prompt pair.")

    # 3. implicit reward vs length
    ks_sc = [k for k in ks if scored_by_k[k] is not None]
    if ks_sc:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, k in enumerate(ks_sc):
            rows = scored_by_k[k]
            xs, ys = [r["num_tokens"] for r in rows], [r["reward"] for r in rows]
            r_p, r_s = pearson(ys, xs), spearman(ys, xs)
            ax.scatter(xs, ys, s=8, alpha=0.5, color=f"C{i % 10}", label=f"iter {k}: r={_fmt(r_p) or 'n/a'}, rho={_fmt(r_s) or 'n/a'}")
        ax.set(xlabel="response tokens", ylabel="implicit reward", title="Implicit reward vs length (sampled responses)")
        ax.legend(fontsize=8)
        save(fig, "reward_length.png", "Implicit reward vs response length",
             "Scored samples of each iteration; r = Pearson, rho = Spearman correlation.")

    # 4. Jaccard overlap of selected prompt ids
    if len(ks_sel) >= 1:
        sets = [{c["prompt_id"] for c in selected_by_k[k]} for k in ks_sel]
        J = jaccard(sets)
        fig, ax = plt.subplots(figsize=(1.2 * len(ks_sel) + 2.5, 1.2 * len(ks_sel) + 1.8))
        im = ax.imshow(J, vmin=0, vmax=1, cmap="viridis")
        for i, j in itertools.product(range(len(ks_sel)), repeat=2):
            ax.text(j, i, f"{J[i][j]:.2f}", ha="center", va="center", color="white" if J[i][j] < 0.6 else "black")
        ax.set_xticks(range(len(ks_sel)), [str(k) for k in ks_sel])
        ax.set_yticks(range(len(ks_sel)), [str(k) for k in ks_sel])
        ax.set(xlabel="iteration", ylabel="iteration", title="Jaccard overlap of selected prompts")
        fig.colorbar(im, ax=ax, fraction=0.046)
        save(fig, "jaccard.png", "Overlap of selected prompts across iterations",
             "|S_i & S_j| / |S_i | S_j| of the prompt ids whose pairs were selected.")

    # the page
    cols = sorted({c for it in its for c in it}, key=lambda c: (c != "iteration", c))
    table = ""
    if its:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(it.get(c))}</td>" for c in cols) + "</tr>" for it in its)
        table = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    # annotation per iteration: what was labelled, dropped, swapped, and what the judge cost
    ann_rows = []
    for k in ks:
        m = root / f"iter_{k}" / "annotate" / "manifest.json"
        if m.exists():
            st = json.loads(m.read_text())["stats"]
            a = st.get("annotator") or {}
            ann_rows.append([k, st.get("candidates"), st.get("pairs"), st.get("ties"), st.get("unlabelled"),
                             st.get("noise_swapped", 0), a.get("requests"), a.get("cache_hits"),
                             (a.get("prompt_tokens") or 0) + (a.get("completion_tokens") or 0) if a else None, a.get("cost")])
    if ann_rows:
        head = "".join(f"<th>{c}</th>" for c in ["iteration", "candidates", "pairs", "ties", "unlabelled",
                                                  "noise swapped", "judge requests", "cache hits", "judge tokens", "cost"])
        body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in ann_rows)
        table += f'<h2>Annotation</h2><div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    figs = "".join(
        f'<figure><h2>{html.escape(t)}</h2><img src="{f}" alt="{html.escape(t)}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for f, t, c in figures
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>iterdpo report: {html.escape(str(summary.get('run', root.name)))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
th {{ background: #f0f0f0; }} .scroll {{ overflow-x: auto; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>iterdpo run <code>{html.escape(str(summary.get('run', root.name)))}</code></h1>
<p>{len(its)} finished iteration(s); {html.escape(str(root))}; generated {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>
{table or '<p>No finished iteration yet (summary.json is empty or missing).</p>'}
{figs}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index

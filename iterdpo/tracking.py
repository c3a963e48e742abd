"""Experiment tracking: Weights & Biases (online or offline) or nothing.

``run.report_to: wandb`` logs, once per finished iteration k (x-axis ``iteration``)::

    summary/<col>        the iteration's row of summary.json (win rate, gold reward, loss, ...)
    <stage>/<stat>       every numeric stat of every stage's manifest, + <stage>/wall_seconds
    completions          wandb.Table of sampled completions: prompt, completion, reward,
                         reward_norm, num_tokens, finish_reason, selected, label
    select/selected_margins   wandb.Histogram of |r(a) - r(b)| of the selected pairs
    artifacts            <run>-data (every table of score, select, annotate, train as <stage>/<file>) and
                         <run>-model (the checkpoint pi_k), aliased ``iter<k>``, with the
                         iteration and the stage keys as metadata

``report_to: none`` imports nothing. wandb is imported only here and only when asked for,
so ``import iterdpo`` stays light. Only rank 0 logs.

A run is resumable: the W&B run id and the iterations already logged are kept in
``<run dir>/wandb.json``, so a resumed (or Slurm-requeued) ``iterdpo run`` continues the
same W&B run and logs each iteration once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterdpo.pipeline import artifacts
from iterdpo.pipeline.summary import summarize

if TYPE_CHECKING:  # pragma: no cover
    from iterdpo.pipeline.context import Run

STAGE_STATS = ("sample", "score", "select", "annotate", "train", "eval_responses", "evaluate")


class Tracker:
    """The do-nothing tracker (``report_to: none``); also the interface."""

    def log_iteration(self, run: Run, k: int) -> None:
        """Log iteration k (all its stages have finished)."""

    def finish(self, summary: dict) -> None:
        """Log the run's summary and close."""


def make_tracker(run: Run) -> Tracker:
    """The tracker ``run.cfg.run.report_to`` names (rank 0 only; others get the null one)."""
    if run.cfg.run.report_to == "none" or int(os.environ.get("RANK", "0")) != 0:
        return Tracker()
    return WandbTracker(run)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def iteration_metrics(run: Run, k: int) -> dict[str, float]:
    """Flat metrics of iteration k: the summary row and every numeric stage stat."""
    out: dict[str, float] = {"iteration": k}
    for row in summarize(run)["iterations"]:
        if row["iteration"] == k:
            out.update({f"summary/{c}": v for c, v in row.items() if c != "iteration" and _number(v)})
    for stage in STAGE_STATS:
        m = run.rd.manifest(run.rd.stage(k, stage))
        if m is None:
            continue
        out.update({f"{stage}/{s}": v for s, v in m["stats"].items() if _number(v)})
        out[f"{stage}/wall_seconds"] = m["wall_seconds"]
    return out


def completion_rows(run: Run, k: int, limit: int) -> list[dict]:
    """Up to ``limit`` scored completions of iteration k, marked selected / chosen / rejected."""
    scored = artifacts.read(run.rd.stage(k, "score"), "scored").slice(0, limit).to_pylist()
    pairs = artifacts.selected_pairs(run.rd.stage(k, "select"))  # candidates, or SeRA's oriented pairs
    selected = set(pairs.column("a_id").to_pylist()) | set(pairs.column("b_id").to_pylist())
    label: dict[str, str] = {}
    for p in artifacts.read(run.rd.stage(k, "annotate"), "labelled").to_pylist():
        label[p["chosen_id"]], label[p["rejected_id"]] = "chosen", "rejected"
    cols = ("prompt_id", "completion_id", "prompt", "completion", "num_tokens", "finish_reason", "reward", "reward_norm")
    return [
        {**{c: r[c] for c in cols}, "selected": r["completion_id"] in selected, "label": label.get(r["completion_id"], "")}
        for r in scored
    ]


def _artifact_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)


class WandbTracker(Tracker):
    """Logs to W&B; ``WANDB_MODE=offline`` (or ``wandb.mode: offline``) needs no network."""

    def __init__(self, run: Run):
        try:
            import wandb
        except ImportError:
            raise RuntimeError(
                "run.report_to is 'wandb' but wandb is not installed: pip install 'iterdpo[wandb]' "
                "(or set run.report_to: none)"
            ) from None
        self.wandb = wandb
        cfg = run.cfg
        self.state_file = run.rd.root / "wandb.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.state.setdefault("id", secrets.token_hex(6))  # W&B run ids: [a-z0-9]
        self.state.setdefault("logged", [])
        w = cfg.wandb
        self.wb = wandb.init(
            project=w.project, entity=w.entity, mode=w.mode, group=w.group, tags=w.tags or None,
            name=cfg.run.name, id=self.state["id"], resume="allow", dir=str(run.rd.root),
            config=cfg.model_dump(), settings=wandb.Settings(silent=True, console="off"),
        )
        self.wb.define_metric("iteration")
        self.wb.define_metric("*", step_metric="iteration")
        self._save_state()

    def _save_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_file)

    def log_iteration(self, run: Run, k: int) -> None:
        if k in self.state["logged"]:
            return
        wandb, w = self.wandb, run.cfg.wandb
        data: dict[str, Any] = dict(iteration_metrics(run, k))
        margins = artifacts.selected_pairs(run.rd.stage(k, "select")).column("margin").to_pylist()
        if margins:
            data["select/selected_margins"] = wandb.Histogram(margins)
        if w.table_rows:
            rows = completion_rows(run, k, w.table_rows)
            if rows:
                data["completions"] = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
        self.wb.log(data)
        if w.artifacts != "none":
            self._log_artifacts(run, k, w.artifacts == "upload")
        self.state["logged"].append(k)
        self._save_state()

    def _log_artifacts(self, run: Run, k: int, upload: bool) -> None:
        wandb = self.wandb
        base = _artifact_name(run.cfg.run.name)

        def add(art, path: Path, name: str) -> None:
            if upload:
                art.add_dir(str(path), name=name) if path.is_dir() else art.add_file(str(path), name=name)
            else:
                art.add_reference(path.resolve().as_uri(), name=name)

        meta = {"iteration": k, **{f"{s}_key": run.stage_key(k, s) for s in ("score", "select", "annotate", "train")}}
        data = wandb.Artifact(f"{base}-data", type="dataset", metadata={**meta, "annotate": run.stats(k, "annotate")})
        files = {artifacts.path_of(run.rd.stage(k, stage), a.name) for stage in ("score", "select", "annotate")
                 for a in artifacts.ARTIFACTS.values() if a.schema is not None}
        files.add(artifacts.path_of(run.rd.stage(k, "train"), "preferences"))  # the pairs with training's log-probs
        for path in sorted(p for p in files if p.is_file()):  # every table artifact of those stages, as <stage>/<file>
            add(data, path, f"{path.parent.name}/{path.name}")
        self.wb.log_artifact(data, aliases=[f"iter{k}", "latest"])
        model = wandb.Artifact(f"{base}-model", type="model", metadata={**meta, "train": run.stats(k, "train")})
        add(model, run.rd.stage(k, "train") / "model", "model")
        self.wb.log_artifact(model, aliases=[f"iter{k}", "latest"])

    def finish(self, summary: dict) -> None:
        its = summary.get("iterations", [])
        if its:
            cols = list(its[0])
            self.wb.log({"iteration": its[-1]["iteration"], "summary_table": self.wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in its])})
            self.wb.summary.update({f"final/{c}": v for c, v in its[-1].items() if _number(v)})
        self.wb.finish()

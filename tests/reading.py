"""Shared check: `iterdpo report` and W&B offline tracking read every artifact of a finished run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def report_and_wandb_read_every_artifact(root: Path) -> None:
    """Render the report of ``root`` and log all its iterations to an offline W&B run; check both read everything.

    The report must draw the margin histograms (scored + the select stage's pairs, whatever
    their artifact) of every iteration; W&B must log the completions table (scored, selected
    and labelled responses), the margin histogram and a data artifact that holds every table
    artifact of score, select, annotate and train.
    """
    import json

    from iterdpo.config import load_config
    from iterdpo.pipeline.context import Run
    from iterdpo.tracking import WandbTracker
    from tests.test_tracking import history, read_wandb_records

    r = subprocess.run([sys.executable, "-m", "iterdpo", "report", str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    page = (root / "report" / "index.html").read_text()
    summary = json.loads((root / "summary.json").read_text())
    ks = [it["iteration"] for it in summary["iterations"]]
    assert ks and all(f'src="{png}"' in page for png in ("margins.png", "reward_length.png", "jaccard.png"))

    cfg = load_config(root / "config.yaml", ["run.report_to=wandb", "wandb.mode=offline", "wandb.artifacts=reference"])
    assert cfg.run_dir() == root
    run = Run(cfg)
    tracker = WandbTracker(run)
    for k in ks:
        tracker.log_iteration(run, k)
    tracker.finish(summary)
    files = sorted(root.glob(f"wandb/offline-run-*-{tracker.state['id']}/run-*.wandb"))
    deadline = time.time() + 120  # W&B's service process may still be writing the log when finish() returns
    records = read_wandb_records(files[-1])
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.time() < deadline, f"{files[-1]}: no exit record"
        time.sleep(0.2)
        records = read_wandb_records(files[-1])
    keys = history(records)
    assert keys.get("completions/_type") == "table-file" and keys["select/selected_margins/_type"] == "histogram"
    table = json.loads(next(files[-1].parent.glob("files/media/table/completions_*.table.json")).read_text())
    cols = table["columns"]
    assert any(row[cols.index("selected")] for row in table["data"]) and any(row[cols.index("label")] for row in table["data"])
    arts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "dataset"]
    assert len(arts) == len(ks)
    for art in arts:
        paths = {e.path for e in art.manifest.contents}
        k = json.loads(art.metadata)["iteration"]
        select = "sera_pairs.parquet" if (root / f"iter_{k}" / "select" / "sera_pairs.parquet").exists() else "candidates.parquet"
        assert {"scored.parquet", select, "pairs.parquet"} <= {Path(p).name for p in paths}, paths
        assert len(paths) == 4  # scored, the selection, annotate's labelled pairs, train's pairs with log-probs

"""benchmarks/seeds/run.py at its smoke size on the built-in toy task: every strategy of
every paper's comparison reaches the CSV and the markdown with finite numbers, and a
rerun resumes from the records (runs nothing)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "benchmarks" / "seeds"


def _grid_rows() -> set[tuple[str, str, str]]:
    """(paper, setting, strategy) of every row the smoke grid must report."""
    sys.path.insert(0, str(HARNESS))
    try:
        from grid import PAPERS, build_grid, reported_rows
    finally:
        sys.path.remove(str(HARNESS))
    return {(s.paper, setting, strategy) for job in build_grid("smoke", [0], list(PAPERS), "toy")
            for s in job.specs for setting, strategy in reported_rows(s)}


@pytest.mark.slow
def test_smoke_harness_reports_every_strategy_and_resumes(toy_cache, tmp_path):
    out = tmp_path / "seeds"
    cmd = [sys.executable, str(HARNESS / "run.py"), "--size", "smoke", "--world", "toy", "--out", str(out), "--workers", "2"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    # every strategy row of every comparison, its main metric finite
    main_metric = {"000": "one_minus_spearman", "001": "gold_win_rate_vs_sft", "002": "gold_win_rate_vs_sft", "003": "gold_win_rate_vs_sft",
                   "ctl": "gold_reward_gain"}
    with (out / "results" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(math.isfinite(float(r["value"])) for r in rows)
    reported = {(r["paper"], r["setting"], r["strategy"]) for r in rows if r["metric"] == main_metric[r["paper"]]}
    expected = _grid_rows()
    assert expected == reported
    assert {r["strategy"] for r in rows if r["paper"] == "003" and r["metric"] == "sft_implicit_reward_length_pearson"} == {"sera", "iterative", "offline"}
    assert {r["strategy"] for r in rows if r["paper"] == "000" and r["metric"] == "best_of_n"} >= {"dopt", "pa_dopt", "batchbald", "random", "all"}
    # SeRA's diagnostics against gold, and the length correlation on dataset responses (issue #13)
    for metric in ("kept_offline_label_error", "bootstrap_label_accuracy", "dataset_implicit_reward_length_pearson"):
        assert {r["strategy"] for r in rows if r["paper"] == "003" and r["metric"] == metric} >= {"sera"}, metric
    # 001 and the control start from the offline-DPO warm start, against the SFT reference
    warm = json.loads((out / "warm" / "warm.json").read_text())
    assert Path(warm["policy"]).is_dir()
    argv = json.loads((out / "records" / "001-margin-smallest-s0.json").read_text())["argv"]
    assert f"model.name_or_path={warm['policy']}" in argv and "model.reference=toy" in argv
    meta = json.loads((out / "results" / "meta.json").read_text())
    assert meta["cpu_seconds"] > 0 and meta["claims_sha1"] and meta["warm_start"]["policy"] == warm["policy"]

    md = (out / "results" / "results.md").read_text()
    for _paper, _setting, strategy in expected:
        assert f"| {strategy} |" in md
    # the per-setting tables have every strategy's main metric (first column); SeRA's diagnostics are n/a by design
    # where a method has no kept / bootstrapped pairs (offline: one iteration; iterative: no bootstrapping)
    per_setting = md.split(": loss x method by swapped-label share")[0]
    main_cells = [line.split("|")[2].strip() for line in per_setting.splitlines()
                  if line.startswith("| ") and not line.startswith("| strategy") and not line.startswith("| control")]
    assert main_cells and "n/a" not in main_cells
    assert "missing" not in md
    for png in ("000_active_rm.png", "001_margin.png", "002_apl.png", "003_sera.png"):
        assert (out / "results" / png).stat().st_size > 1000

    # a rerun finds a record for every run: nothing runs, no record is rewritten
    records = {p: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    assert len(records) == len({(p, st, s) for p, st, s in expected if (p, st) != ("001", "schedule") or s != "constant"})
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert ", 0 to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")} == records

"""benchmarks/seeds/run.py's grid options, without running a run: --paper-seeds (per-paper seed
counts), --settings (which settings run), --report-only (the report from the records alone),
the warm-started pi_0 of 001 / the control, and 000's ceiling run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "benchmarks" / "seeds"


def test_paper_seeds_settings_and_report_only(tmp_path):
    out = tmp_path / "seeds"
    cmd = [sys.executable, str(HARNESS / "run.py"), "--size", "smoke", "--world", "toy", "--only", "000,003", "--paper-seeds", "000=2",
           "--settings", "dpo noise=0.2", "--report-only", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # 000: 2 seeds x (8 strategies x 2 pools + the ceiling); 003 at smoke size: 4 losses x 3 methods, 1 seed
    assert "46 runs, 0 finished before, 3 to run (--report-only: none run)" in done.stdout
    meta = json.loads((out / "results" / "meta.json").read_text())
    assert meta["paper_seeds"] == {"000": 2} and meta["ran_now"] == 0
    assert {"000-ceiling-all-s1", "000-cross_prompt-dopt-s1", "003-simpo_noise0.2-offline-s0"} <= set(meta["missing"])
    assert not (out / "records").exists() and not (out / "runs").exists()  # nothing ran
    bad = subprocess.run([*cmd[:-2], "--paper-seeds", "009=3", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--paper-seeds: '009=3'" in bad.stderr


def test_first_seed_offsets_every_paper(tmp_path):
    """--first-seed K: seeds K..K+N-1 for --seeds and --paper-seeds alike (a pilot on seeds no
    grid uses; two machines splitting one grid seed-major)."""
    out = tmp_path / "seeds"
    cmd = [sys.executable, str(HARNESS / "run.py"), "--size", "smoke", "--world", "toy", "--only", "000,ctl", "--first-seed", "100",
           "--seeds", "1", "--paper-seeds", "000=2", "--report-only", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "seeds=[100]" in done.stdout
    missing = set(json.loads((out / "results" / "meta.json").read_text())["missing"])
    assert {"000-ceiling-all-s100", "000-ceiling-all-s101", "ctl-control-random-oracle-s100"} <= missing
    assert all(m.endswith(("-s100", "-s101")) for m in missing)  # 000 at 2 seeds from 100
    assert [m for m in missing if m.startswith("ctl")] == ["ctl-control-random-oracle-s100"]  # --seeds 1


def test_grid_warm_start_and_ceiling_overrides():
    sys.path.insert(0, str(HARNESS))
    try:
        from grid import SIZES, WARM_POLICY, build_grid, warm_start_argv
    finally:
        sys.path.remove(str(HARNESS))
    specs = {s.run_id: s for j in build_grid("full", [0], ["ctl", "001", "000", "002"], "toy", pi0="/pi0") for s in j.specs}
    for run_id in ("ctl-control-random-oracle-s0", "001-margin-smallest-s0", "001-schedule-decrease-s0"):
        ov = specs[run_id].overrides
        assert "model.name_or_path=/pi0" in ov and "model.reference=toy" in ov and "model.name_or_path=toy" not in ov
        assert f"train.learning_rate={SIZES['full']['lr']}" in ov and "sample.n=8" in ov
    # 002: one sampling temperature for every acquisition function, S/M >= 8
    temps = {[o for o in specs[f"002-acquisition-{s}-s0"].overrides if o.startswith("sample.temperature=")][-1]
             for s in ("certainty", "entropy", "hybrid", "random")}
    assert len(temps) == 1 and 1 / SIZES["full"]["apl"]["fraction"] >= 8
    ceiling = specs["000-ceiling-all-s0"].overrides
    a = SIZES["full"]["arm"]
    assert "arm.rounds=1" in ceiling and f"arm.batch={a['prompts'] * a['n'] * (a['n'] - 1) // 2}" in ceiling and "arm.pool=in_prompt" in ceiling
    warm = warm_start_argv("full", "world", "/tmp/w")
    assert "sera.offline_length_bias=0.0" in warm and "run.iterations=1" in warm and WARM_POLICY.startswith("warm-pi0/")

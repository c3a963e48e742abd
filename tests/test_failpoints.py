"""Kill every stage at every failpoint, resume, and get the uninterrupted run's result.

``ITERDPO_FAILPOINT=<stage>[@<k>]:<point>`` makes the process SIGKILL itself at an exact
point of the stage's commit (iterdpo/failpoints.py). A *chain* runs one pipeline to the
end as a sequence of processes: process i is killed at stage i (in commit order) at
point ``POINTS[(i + rotation) % 4]``, process i+1 resumes it and is killed at stage i+1,
and a last process finishes the run. Each kill is checked (exit by SIGKILL, the stage
committed only after ``after_commit``), then the result is compared with an
uninterrupted run of the same config: summary (without wall times), every manifest's key
and stats, every Parquet file, metrics.json and the model weights, byte for byte.

Four rotations of a chain put every stage at every point. CI runs rotation 0 of the
default pipeline (every stage killed once, each point twice); ``ITERDPO_FAILPOINT_MATRIX=full``
runs all four rotations of the default, SeRA and APL pipelines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iterdpo.failpoints import POINTS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = ["run.iterations=1", "data.prompts_per_iteration=8", "sample.n=2", "sample.max_tokens=8", "sample.batch_size=4",
        "evaluate.num_prompts=4", "evaluate.max_tokens=8", "train.epochs=1", "train.batch_size=4"]
PIPELINES = {
    "default": TINY,
    # SeRA needs a second iteration for its bootstrap stage and the ensemble's pi_{t-2} scoring
    "sera": [*TINY, "run.iterations=2", "select.selector=sera", "run.reference=previous", "score.prev_policy=true",
             "sera.offline_size=8", "sera.bootstrap_prompts=4"],
    "apl": [*TINY, "select.selector=certainty", "run.init=reset", "select.corpus_fraction=0.5"],
}
FULL = os.environ.get("ITERDPO_FAILPOINT_MATRIX") == "full"
CASES = [(p, r) for p in PIPELINES for r in range(4)] if FULL else [("default", 0)]


def iterdpo_run(out: Path, over: list[str], failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("ITERDPO_FAILPOINT", None)
    if failpoint:
        env["ITERDPO_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "iterdpo", "run", f"run.output_dir={out}", *over], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def references(toy_cache, tmp_path_factory):
    """Uninterrupted runs, one per pipeline, made on first use; their stages in commit order."""
    made = {}

    def get(name: str):
        if name not in made:
            out = tmp_path_factory.mktemp(f"ref-{name}")
            p = iterdpo_run(out, PIPELINES[name])
            assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
            order = []
            for where in re.findall(r"^\[iterdpo\] (.+?): running", p.stdout, re.M):
                m = re.fullmatch(r"iter (\d+) (\w+)", where)
                order.append(f"{m.group(2)}@{m.group(1)}" if m else where)
            made[name] = (out / "toy", order)
        return made[name]

    return get


def stage_dir(root: Path, target: str) -> Path:
    name, _, k = target.partition("@")
    return root / f"iter_{k}" / name if k else root / name


def snapshot(root: Path) -> dict:
    """Everything a run computes, wall times aside: file bytes and manifest keys and stats."""
    out = {}
    summary = json.loads((root / "summary.json").read_text())
    for it in summary["iterations"]:
        it.pop("wall_seconds")
    out["summary.json"] = summary
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.suffix in (".parquet", ".safetensors") or f.name in ("metrics.json", "pairs.parquet"):
            out[rel] = f.read_bytes()
        elif f.name == "manifest.json":
            m = json.loads(f.read_text())
            out[rel] = {"key": m["key"], "stats": m["stats"]}
    return out


@pytest.mark.parametrize(("pipeline", "rotation"), CASES, ids=[f"{p}-rot{r}" for p, r in CASES])
def test_kill_every_stage_then_resume_equals_the_uninterrupted_run(pipeline, rotation, references, tmp_path):
    ref_root, order = references(pipeline)
    over = PIPELINES[pipeline]
    root = tmp_path / "toy"
    for i, target in enumerate(order):
        point = POINTS[(i + rotation) % len(POINTS)]
        p = iterdpo_run(tmp_path, over, f"{target}:{point}")
        assert p.returncode == -9, f"{target}:{point} did not fire\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        assert f"failpoint {target}:{point}: killing process" in p.stderr, p.stderr[-1000:]
        committed = (stage_dir(root, target) / "manifest.json").exists()
        assert committed == (point == "after_commit"), f"{target}:{point}: committed={committed}"
    p = iterdpo_run(tmp_path, over)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    got, want = snapshot(root), snapshot(ref_root)
    assert sorted(got) == sorted(want)
    different = [k for k in want if got[k] != want[k]]
    assert not different, f"differs from the uninterrupted run: {different}"


def test_disk_full_during_train_is_one_line_then_resume_after_freeing_space(references, tmp_path):
    """A real full disk: a small tmpfs holds the run; a filler takes the rest of it just before train."""
    ref_root, _ = references("default")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here (root in CI)")
    try:
        over = PIPELINES["default"]
        p = iterdpo_run(disk, over, "train@1:before_write")  # everything up to train, on the small disk
        assert p.returncode == -9, p.stderr[-2000:]
        filler = disk / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        p = iterdpo_run(disk, over)
        assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("iterdpo: ") or "Traceback" in ln]
        print(lines[0])
        assert len(lines) == 1 and "No space left on device" in lines[0] and "iter_1" in lines[0], p.stderr[-2000:]
        assert not (disk / "toy" / "iter_1" / "train").exists()
        assert (disk / "toy" / "iter_1" / "annotate" / "manifest.json").exists()  # finished stages are kept
        filler.unlink()
        p = iterdpo_run(disk, over)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert "iter 1 annotate: done already" in p.stdout
        got, want = snapshot(disk / "toy"), snapshot(ref_root)
        assert sorted(got) == sorted(want)
        assert not [k for k in want if got[k] != want[k]]
    finally:
        subprocess.run(["umount", str(disk)], check=True)

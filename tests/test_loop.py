"""End to end on the toy task: the loop, its summary, resume after SIGKILL, no redone work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

TINY = """
run: {{name: {name}, output_dir: {out}, iterations: 2, seed: 3}}
data: {{prompts_per_iteration: 32}}
sample: {{batch_size: 2, n: 4}}
train: {{epochs: 10, batch_size: 4}}
evaluate: {{num_prompts: 16}}
"""


def start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "iterdpo", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )


def finish(cfg: Path) -> str:
    p = start(cfg)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    return out


def kill_when(cfg: Path, ready) -> None:
    """Start a run, SIGKILL it as soon as ready() holds (in the middle of a stage)."""
    p = start(cfg)
    deadline = time.time() + 1800  # a hang guard, not a speed check
    while not ready():
        assert p.poll() is None, "the run ended before the kill point was reached"
        assert time.time() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()


def results(root: Path) -> dict:
    summary = json.loads((root / "summary.json").read_text())
    del summary["run"]
    for it in summary["iterations"]:
        it.pop("wall_seconds")
    weights = load_file(root / "iter_2" / "train" / "model" / "model.safetensors")
    return {
        "summary": summary,
        "pairs": [pq.read_table(root / f"iter_{k}" / "train" / "pairs.parquet").to_pylist() for k in (1, 2)],
        "weights": weights,
    }


def same(a: dict, b: dict) -> None:
    assert a["summary"] == b["summary"]
    assert a["pairs"] == b["pairs"]
    for name, w in a["weights"].items():
        torch.testing.assert_close(w, b["weights"][name], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def reference_run(toy_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = out / "cfg.yaml"
    cfg.write_text(TINY.format(name="ref", out=out))
    log = finish(cfg)
    return out / "ref", cfg, log


def test_summary_and_table(reference_run):
    root, _, log = reference_run
    summary = json.loads((root / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
    keys = {"iteration", "pairs_trained", "mean_abs_margin", "train_loss", "gold_win_rate_vs_sft", "mean_gold_reward", "mean_length", "wall_seconds"}
    for it in summary["iterations"]:
        assert keys <= set(it)  # the fields; evaluation adds KL and implicit-reward metrics
        assert 0 < it["pairs_trained"] <= 16 and 0 <= it["gold_win_rate_vs_sft"] <= 1
    assert summary["iterations"][0]["mean_abs_margin"] == 0.0  # pi_0 is its own reference
    assert "warning: iter 1 select: every implicit reward margin is 0 because the policy is its own reference" in log
    assert "warning: iter 2 select" not in log
    assert summary["iterations"][1]["mean_abs_margin"] > 0.0
    assert "gold_win_rate_vs_sft" in log.splitlines()[-3]  # the table's header
    for k in (1, 2):
        for stage in ("sample", "score", "select", "annotate", "train", "evaluate"):
            assert (root / f"iter_{k}" / stage / "manifest.json").exists()
    # stage outputs follow TRL's column names, so TRL can load them
    pairs = pq.read_table(root / "iter_1" / "train" / "pairs.parquet")  # the pairs trained on, with their log-probs
    assert {"prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps"} <= set(pairs.column_names)


def test_rerunning_a_finished_run_does_no_work(reference_run):
    root, cfg, _ = reference_run
    before = {p: p.stat().st_mtime_ns for p in root.rglob("manifest.json")}
    log = finish(cfg)
    assert "running" not in log and log.count("done already, skipped") == 2 * 6  # the 6 stages the driver runs
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("manifest.json")}


def test_changed_config_refuses_to_reuse_outputs(reference_run):
    root, cfg, _ = reference_run
    before = (root / "config.yaml").read_text()
    p = subprocess.run([sys.executable, "-m", "iterdpo", "run", "--config", str(cfg), "train.beta=0.3"], capture_output=True, text=True)
    assert p.returncode == 2 and "different config" in p.stderr
    assert (root / "config.yaml").read_text() == before  # it still describes the outputs beside it


def test_a_second_process_on_a_running_run_exits_2_and_leaves_it_intact(toy_cache, tmp_path):
    """Issue 12: two `iterdpo run` on one run name mixed two configs in one run directory."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY.format(name="twice", out=tmp_path).replace("iterations: 2", "iterations: 1").replace("prompts_per_iteration: 32", "prompts_per_iteration: 8"))
    root = tmp_path / "twice"
    first = start(cfg)
    deadline = time.time() + 600  # a hang guard
    while f'"pid": {first.pid}' not in ((root / ".lock").read_text() if (root / ".lock").exists() else ""):
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.01)
    second = subprocess.run([sys.executable, "-m", "iterdpo", "run", "--config", str(cfg), "sample.temperature=0.7"],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"{root} is in use by pid {first.pid}" in second.stderr, second.stderr
    assert first.poll() is None, "the first run ended before the second tried: the check proved nothing"
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    assert "temperature: 1.0" in (root / "config.yaml").read_text()  # the second wrote nothing


def test_sigkill_in_sampling_and_training_then_resume(reference_run, tmp_path):
    ref_root, _, _ = reference_run
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY.format(name="killed", out=tmp_path))
    root = tmp_path / "killed"
    # 1) killed in the middle of iteration 1's sampling: finished shards exist, the stage does not
    kill_when(cfg, lambda: len(list((root / "iter_1" / ".sample.partial").rglob("*.parquet"))) >= 2)
    assert not (root / "iter_1" / "sample").exists()
    # 2) resumed, then killed in the middle of iteration 2's training
    kill_when(cfg, lambda: (root / "iter_2" / ".train.tmp").exists())
    assert (root / "iter_2" / "annotate" / "manifest.json").exists() and not (root / "iter_2" / "train").exists()
    log = finish(cfg)
    assert "iter 1 sample: done already" in log and "iter 2 train: running" in log
    same(results(root), results(ref_root))


def test_killed_sampling_resumed_with_another_config_resamples(tmp_path):
    """Finished shards of a killed stage are keyed by its config: a resume with another
    sampling config must not fold the old shards in (here T=1 shards into a greedy stage)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY.format(name="changed", out=tmp_path))
    root = tmp_path / "changed"
    kill_when(cfg, lambda: len(list((root / "iter_1" / ".sample.partial").rglob("*.parquet"))) >= 2)
    p = subprocess.run(
        [sys.executable, "-m", "iterdpo", "sample", "--iteration", "1", "--config", str(cfg), "sample.temperature=0"],
        capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    rows = pq.read_table(root / "iter_1" / "sample" / "completions.parquet").to_pylist()
    distinct: dict[str, set] = {}
    for r in rows:
        distinct.setdefault(r["prompt_id"], set()).add(r["completion"])
    assert len(distinct) == 32 and all(len(v) == 1 for v in distinct.values())  # greedy everywhere

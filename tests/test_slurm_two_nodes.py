"""Two Slurm nodes for real: jobs across two hosts in network namespaces.

``.ci/slurm.sh two-nodes`` starts partition ``two``: hosts ci-node1 (10.77.0.11) and
ci-node2 (10.77.0.12), each with its own network and UTS namespace and its own slurmd,
on a bridge to slurmctld (10.77.0.1); they share this machine's filesystem. Every job here
runs there (``--partition two``), so all its traffic stays on those addresses.

One sampled iteration (``sample`` in one process, here) is the common input; the stages
after it run as 2-node jobs (one process per node, gloo) and are compared with the same
stages run in one process: scoring equals it row by row, and training with
``train.batch_size=1`` on 2 processes equals ``train.batch_size=2`` on one (the global
batch is ``batch_size * processes`` and the loss is normalised by it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iterdpo import records, slurm

ROOT = Path(__file__).resolve().parents[1]
NODES = ("ci-node1", "ci-node2")
COMMON = ["run.iterations=1", "data.prompts_per_iteration=48", "sample.n=4", "evaluate.num_prompts=8",
          "train.epochs=2", "score.shard_rows=16", "score.batch_tokens=512", "train.checkpoint_every=2"]
ONE_PROCESS = ["train.batch_size=2"]
TWO_PROCESSES = ["train.batch_size=1"]  # x 2 processes: the same global batches as ONE_PROCESS


def two_nodes_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-p", "two", "-o", "%n %T"], capture_output=True, text=True)
    states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
    return res.returncode == 0 and sorted(states) == sorted(NODES)


needs_two_nodes = pytest.mark.skipif(not two_nodes_idle(), reason="needs the two-node cluster (.ci/slurm.sh two-nodes)")
pytestmark = [pytest.mark.slurm, pytest.mark.slow, needs_two_nodes]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}


def iterdpo(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "iterdpo", *args], cwd=ROOT, env=env(), capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, f"iterdpo {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def job_log(root: Path, job: str) -> str:
    return next((root / "slurm").glob(f"*-{job}.out")).read_text()


@pytest.fixture(scope="module")
def runs(toy_cache, tmp_path_factory) -> Path:
    """``sampled``: iteration 1 sampled; ``one``: the whole iteration in one process."""
    d = tmp_path_factory.mktemp("two-nodes")
    iterdpo("sample", "-k", "1", f"run.output_dir={d}", "run.name=sampled", *COMMON)
    shutil.copytree(d / "sampled", d / "one")
    iterdpo("run", f"run.output_dir={d}", "run.name=one", *COMMON, *ONE_PROCESS)
    return d


def start_from_samples(runs: Path, name: str) -> None:
    shutil.copytree(runs / "sampled", runs / name)


def assert_scoring_equal(one: Path, two: Path) -> None:
    a_rows = records.read_table(one / "iter_1" / "score" / "scored.parquet").to_pylist()
    b_rows = records.read_table(two / "iter_1" / "score" / "scored.parquet").to_pylist()
    assert len(a_rows) == len(b_rows) == 192
    for a, b in zip(a_rows, b_rows, strict=True):
        assert a["completion_id"] == b["completion_id"] and a["num_tokens"] == b["num_tokens"]
        for col in ("policy_logp", "ref_logp", "reward", "reward_norm"):
            assert a[col] == pytest.approx(b[col], abs=1e-5), col


def assert_training_equal(one: Path, two: Path, processes: int = 2) -> None:
    """Same losses step by step and the same final model (each pair's final log-probs)."""
    a = json.loads((one / "iter_1" / "train" / "manifest.json").read_text())["stats"]
    b = json.loads((two / "iter_1" / "train" / "manifest.json").read_text())["stats"]
    assert (a["processes"], b["processes"]) == (1, processes)
    assert a["steps"] == b["steps"] > 4
    for key in ("first_loss", "train_loss", "last_loss", "reward_accuracy", "final_mean_margin"):
        assert b[key] == pytest.approx(a[key], abs=1e-5), key
    ma = records.read_table(one / "iter_1" / "train" / "pair_margins.parquet").to_pylist()
    mb = records.read_table(two / "iter_1" / "train" / "pair_margins.parquet").to_pylist()
    assert [r["chosen_id"] for r in ma] == [r["chosen_id"] for r in mb]
    for x, y in zip(ma, mb, strict=True):
        for col in ("margin", "policy_chosen_logps", "policy_rejected_logps"):
            assert y[col] == pytest.approx(x[col], abs=1e-4), col


def submit(runs: Path, name: str, *options: str, wait: bool = True) -> tuple[str, subprocess.CompletedProcess]:
    res = iterdpo("slurm", "submit", "/dev/null", f"run.output_dir={runs}", f"run.name={name}", *COMMON, *TWO_PROCESSES,
                  "--nodes", "2", "--processes-per-node", "1", "--partition", "two", *options,
                  *(["--wait"] if wait else []))
    return re.search(r"as job (\d+)", res.stdout).group(1), res


def test_two_node_gloo_job_equals_one_process(runs):
    """Scoring and training as one 2-process job, one process on each host, rendezvous on ci-node1."""
    start_from_samples(runs, "two")
    job, res = submit(runs, "two")
    assert f"job {job}: COMPLETED" in res.stdout, res.stdout
    log = job_log(runs / "two", job)
    # srun started one task on each host (machine rank = node id), each in its own namespace
    assert "[slurm] node 0 of 2: ci-node1" in log and "[slurm] node 1 of 2: ci-node2" in log, log[-3000:]
    assert re.search(r"\[slurm\] rendezvous ci-node1:2\d{4}\n", log), log[-3000:]
    assert "iter 1 sample: done already, skipped" in log
    assert "iter 1 score: running on 2 processes" in log and "iter 1 train: running on 2 processes" in log
    assert_scoring_equal(runs / "one", runs / "two")
    assert_training_equal(runs / "one", runs / "two")
    assert not (runs / "two" / "iter_1" / ".score.partial").exists()


def test_requeued_two_node_job_finishes_equal(runs):
    """``scontrol requeue`` of the 2-node job after its first training checkpoint: the requeued job
    resumes training from that checkpoint on both hosts and ends with the uninterrupted result.

    This one names the interface: the rendezvous is eth0's address on the first node, and
    GLOO_SOCKET_IFNAME=eth0 keeps gloo on it."""
    start_from_samples(runs, "rq")
    job, _ = submit(runs, "rq", "--network-interface", "eth0", wait=False)
    root = runs / "rq"
    deadline = time.time() + 300
    while not list((root / "iter_1").glob(".train*/**/ckpt/progress.json")):
        assert time.time() < deadline, "the job never wrote a training checkpoint"
        assert slurm.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), job_log(root, job)[-3000:]
        time.sleep(0.1)
    subprocess.run(["scontrol", "requeue", job], check=True)  # kills both nodes' tasks, queues the job again
    assert slurm.wait(job, poll=1.0) == "COMPLETED", job_log(root, job)[-3000:]
    log = job_log(root, job)
    assert "(restart 0)" in log and "(restart 1)" in log and "DUE TO JOB REQUEUE" in log
    assert re.search(r"\[slurm\] rendezvous 10\.77\.0\.11:2\d{4}\n", log), log[-3000:]
    assert log.count("[slurm] node 1 of 2: ci-node2") == 2
    resumed = re.search(r"train: resumed from \S+ at micro-step (\d+)/(\d+)", log)
    assert resumed and 0 < int(resumed[1]) < int(resumed[2]), log[-3000:]
    assert "iter 1 score: done already, skipped" in log
    assert_training_equal(runs / "one", root)

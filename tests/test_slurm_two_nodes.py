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
from collections import Counter
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
    usable = ("idle", "mixed", "allocated", "completing")  # not down, drained or failing
    return res.returncode == 0 and sorted(states) == sorted(NODES) and all(st.rstrip("*~#") in usable for st in states.values())


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
    for key in ("first_loss", "train_loss", "last_loss", "final_mean_margin"):
        assert b[key] == pytest.approx(a[key], abs=1e-5), key
    # reward accuracy counts margins > 0, and at the first step (policy == reference) every margin
    # is 0 up to rounding, which depends on how the rows are batched (packed): at most one pair of
    # the run may land on the other side of 0
    assert abs(b["reward_accuracy"] - a["reward_accuracy"]) * a["steps"] <= 0.5 + 1e-9
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


@pytest.mark.deepspeed
def test_two_node_deepspeed_zero2_job_equals_one_process(runs, tmp_path):
    """The same 2-node job under DeepSpeed ZeRO-2 (the shipped config, on CPU): optimizer state
    and gradients sharded across the two hosts, the same training result as one process."""
    pytest.importorskip("deepspeed")
    import yaml

    cfg = yaml.safe_load((ROOT / "launch" / "accelerate" / "zero2.yaml").read_text())
    cfg["use_cpu"] = True  # DeepSpeed on CPU (DS_ACCELERATOR=cpu); no mixed_precision key
    (tmp_path / "zero2_cpu.yaml").write_text(yaml.safe_dump(cfg))
    start_from_samples(runs, "zero2")
    job, res = submit(runs, "zero2", "--accelerate-config", str(tmp_path / "zero2_cpu.yaml"))
    log = job_log(runs / "zero2", job)
    assert f"job {job}: COMPLETED" in res.stdout, log[-3000:]
    assert "[slurm] node 0 of 2: ci-node1" in log and "[slurm] node 1 of 2: ci-node2" in log
    assert "iter 1 train: running on 2 processes" in log
    assert_scoring_equal(runs / "one", runs / "zero2")
    assert_training_equal(runs / "one", runs / "zero2")


SERVER_ARGS = "--enforce-eager --no-enable-chunked-prefill --dtype float32 --seed 0 --disable-uvicorn-access-log --disable-log-stats"
POOL_SAMPLE = ["run.iterations=1", "data.prompts_per_iteration=128", "sample.n=4", "sample.backend=server",
               "sample.batch_size=8", "sample.concurrency=2", "sample.server_start_timeout=600"]


def sbatch(*args: str, env_extra: dict | None = None) -> str:
    res = subprocess.run(["sbatch", "--parsable", *args], cwd=ROOT, env={**env(), **(env_extra or {})},
                         capture_output=True, text=True, check=True)
    return res.stdout.strip().split(";")[0]


@pytest.mark.vllm
def test_server_pool_on_node2_serves_a_run_on_node1(toy_cache, tmp_path):
    """Two pool jobs of ``launch/slurm/vllm_servers.sbatch`` on ci-node2 (one vLLM server each,
    ports 8000/8001); a sampling job on ci-node1 uses the URLs they wrote through
    ``sample.servers`` over the namespace address. Pool job A is cancelled once the first shard
    is on disk: its requests go to B, and every prompt still has exactly n completions, the
    ones an undisturbed run against B alone samples (per-request seeds)."""
    pytest.importorskip("vllm")
    pool_env = {"MODEL": str(toy_cache / "sft"), "PYTHON": sys.executable, "MAX_MODEL_LEN": "256",
                "VLLM_ARGS": SERVER_ARGS, "VLLM_CPU_KVCACHE_SPACE": "1"}
    pools = {}
    for name, port in (("a", 8000), ("b", 8001)):
        pools[name] = sbatch("--partition=two", "--nodelist=ci-node2", f"--output={tmp_path}/pool-{name}-%j.out",
                             str(ROOT / "launch" / "slurm" / "vllm_servers.sbatch"),
                             env_extra={**pool_env, "ENDPOINTS": str(tmp_path / f"servers-{name}.txt"), "PORT": str(port)})
    try:
        deadline = time.time() + 120
        while not all((tmp_path / f"servers-{n}.txt").exists() for n in pools):
            assert time.time() < deadline, "the pool jobs never wrote their endpoints"
            time.sleep(0.5)
        urls = [(tmp_path / f"servers-{n}.txt").read_text().split() for n in pools]
        assert urls == [["http://ci-node2:8000"], ["http://ci-node2:8001"]]
        servers = f"sample.servers=[{urls[0][0]},{urls[1][0]}]"
        cmd = f"exec {sys.executable} -m iterdpo sample -k 1 run.output_dir={tmp_path} run.name=pool {' '.join(POOL_SAMPLE)} {servers}"
        job = sbatch("--partition=two", "--nodelist=ci-node1", f"--output={tmp_path}/sample-%j.out", f"--wrap={cmd}")
        shards = tmp_path / "pool" / "iter_1"
        deadline = time.time() + 600
        while not list(shards.glob(".sample*/**/shard-*[0-9].parquet")):
            assert time.time() < deadline, "no shard in 600 s"
            assert slurm.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), (tmp_path / f"sample-{job}.out").read_text()[-3000:]
            time.sleep(0.05)
        subprocess.run(["scancel", pools["a"]], check=True)  # the job's servers get SIGTERM, then SIGKILL
        at_kill = len(list(shards.glob(".sample*/**/shard-*[0-9].parquet")))
        log = lambda: (tmp_path / f"sample-{job}.out").read_text()  # noqa: E731
        assert slurm.wait(job, poll=0.5) == "COMPLETED", log()[-3000:]
        assert 1 <= at_kill < 16, at_kill  # 128 prompts, 8 a shard: killed mid-stage
        assert "server http://ci-node2:8000 is gone; its requests go to the 1 other(s)" in log()
        # scancel returns at once; the job may still be COMPLETING (its servers shutting down)
        assert slurm.wait(pools["a"], poll=0.5) == "CANCELLED" and slurm.job_state(pools["b"]) == "RUNNING"
        table = records.read_table(tmp_path / "pool" / "iter_1" / "sample" / "completions.parquet")
        ids = table.column("completion_id").to_pylist()
        assert len(ids) == len(set(ids)) == 128 * 4
        assert set(Counter(table.column("prompt_id").to_pylist()).values()) == {4}
        # the same stage, undisturbed, against B alone, from this (root) namespace by address
        iterdpo("sample", "-k", "1", f"run.output_dir={tmp_path}", "run.name=undisturbed", *POOL_SAMPLE,
                "sample.servers=[http://10.77.0.12:8001]")
        base = records.read_table(tmp_path / "undisturbed" / "iter_1" / "sample" / "completions.parquet").to_pylist()
        same = sum(a == b for a, b in zip(table.to_pylist(), base, strict=True))
        assert same >= 0.95 * len(base), f"{same}/{len(base)} rows equal to the undisturbed run"
    finally:
        subprocess.run(["scancel", *pools.values()], check=False)

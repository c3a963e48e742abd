"""Slurm submission: scripts render for multi-node runs; on a real (one-node) cluster a toy
run goes through chained per-iteration jobs, and a killed + requeued job finishes the run.

The ``slurm`` tests need a running cluster (``.ci/slurm.sh`` starts one on localhost)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iterdpo import slurm

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.prompts_per_iteration=16", "sample.n=2", "evaluate.num_prompts=16", "train.epochs=1",
]


def iterdpo(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "iterdpo", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and res.returncode != 0:
        raise AssertionError(f"iterdpo {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def test_multinode_script_uses_first_node_as_rendezvous(tmp_path):
    res = iterdpo(
        "slurm", "submit", "/dev/null", f"run.output_dir={tmp_path}", "run.name=big", "run.iterations=3",
        "data.prompts_per_iteration=[30, 20, 10]",
        "--nodes", "4", "--gpus-per-node", "8", "--time", "4:00:00", "--partition", "gpu",
        "--setup", "module load cuda", "--iterations-as-jobs", "--dry-run",
    )
    d = tmp_path / "big" / "slurm"
    assert sorted(p.name for p in d.glob("*.sbatch")) == ["iter_1.sbatch", "iter_2.sbatch", "iter_3.sbatch"]
    text = (d / "iter_2.sbatch").read_text()
    for line in [
        "#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --requeue", "#SBATCH --open-mode=append",
        "#SBATCH --partition=gpu", "module load cuda",
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "--machine_rank \\$SLURM_NODEID", "--num_processes \\$((SLURM_NNODES * PROCESSES_PER_NODE))",
        "export PROCESSES_PER_NODE=8", "--multi_gpu", "run.iterations=2", "'data.prompts_per_iteration=[30,20]'",
    ]:
        assert line in text, line
    assert str(d / "config.yaml") in text and "iter_2.sbatch" in res.stdout
    subprocess.run(["bash", "-n", str(d / "iter_2.sbatch")], check=True)
    # job k resumes iterations 1..k with the same keys: its config validates
    from iterdpo.config import load_config

    assert load_config(d / "config.yaml", ["run.iterations=2", "data.prompts_per_iteration=[30,20]"]).prompts_for(2) == 20


def test_multinode_script_with_interface_and_deepspeed_config(tmp_path):
    """--network-interface: the rendezvous is the interface's address on the first node and gloo/NCCL
    use it; a DeepSpeed config on several nodes runs torchrun per node (srun starts one per node)."""
    (tmp_path / "ds.yaml").write_text("distributed_type: DEEPSPEED\n")
    iterdpo("slurm", "submit", "/dev/null", f"run.output_dir={tmp_path}", "run.name=ib", "--nodes", "2",
            "--gpus-per-node", "4", "--network-interface", "ib0", "--accelerate-config", str(tmp_path / "ds.yaml"), "--dry-run")
    text = (tmp_path / "ib" / "slurm" / "run.sbatch").read_text()
    for line in [
        f"export MASTER_ADDR=$({sys.executable} -m iterdpo.slurm address ib0)",
        "export GLOO_SOCKET_IFNAME=ib0 NCCL_SOCKET_IFNAME=ib0",
        f"export MASTER_PORT=${{MASTER_PORT:-$({sys.executable} -m iterdpo.slurm port)}}",
        "--deepspeed_multinode_launcher standard", f"--config_file {tmp_path / 'ds.yaml'}",
        "echo [slurm] node \\$SLURM_NODEID of \\$SLURM_NNODES: \\$(hostname);",
    ]:
        assert line in text, line
    assert "--multi_gpu" not in text and "scontrol show hostnames" not in text
    subprocess.run(["bash", "-n", str(tmp_path / "ib" / "slurm" / "run.sbatch")], check=True)


def test_rendezvous_port_is_derived_from_the_job_and_free():
    import socket

    first = slurm.rendezvous_port(14567)  # 20000 + 14567 % 10000, or the next free one
    assert 24567 <= first < 24667
    with socket.socket() as taken:
        taken.bind(("", first))
        taken.listen()
        assert first < slurm.rendezvous_port(14567) < 24667
    assert slurm.interface_address("lo") == "127.0.0.1"
    with pytest.raises(slurm.SlurmError, match="'nope0' has no IPv4 address"):
        slurm.interface_address("nope0")


def test_bad_submit_options_are_clear(tmp_path):
    res = iterdpo("slurm", "submit", "/dev/null", f"run.output_dir={tmp_path}", "--nodes", "2", "--launcher", "python", "--dry-run", check=False)
    assert res.returncode == 1 and "--launcher python runs one process on one node" in res.stderr
    res = iterdpo("slurm", "submit", "/dev/null", "select.instance=median", "--dry-run", check=False)
    assert res.returncode == 2 and "select.instance" in res.stderr
    no_slurm = {"PATH": str(Path(sys.executable).parent)}
    res = subprocess.run([sys.executable, "-m", "iterdpo", "slurm", "submit", "/dev/null", f"run.output_dir={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, env=no_slurm)
    assert res.returncode == 1 and "sbatch not found" in res.stderr


needs_cluster = pytest.mark.skipif(
    shutil.which("sbatch") is None
    or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0,
    reason="needs a running Slurm cluster (.ci/slurm.sh starts one)",
)


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_toy_iterations_as_chained_jobs(toy_cache, tmp_path):
    """Two iterations, one job each (afterok), through srun + accelerate launch."""
    res = iterdpo(
        "slurm", "submit", "/dev/null", f"run.output_dir={tmp_path}", "run.name=chain", "run.iterations=2", *TINY,
        "--iterations-as-jobs", "--launcher", "accelerate", "--wait",
    )
    ids = re.findall(r"as job (\d+)", res.stdout)
    assert len(ids) == 2 and f"job {ids[1]}: COMPLETED" in res.stdout, res.stdout
    root = tmp_path / "chain"
    summary = json.loads((root / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
    assert all(it["pairs_trained"] > 0 for it in summary["iterations"])
    log1 = (root / "slurm" / f"iterdpo-chain-it1-{ids[0]}.out").read_text()
    log2 = (root / "slurm" / f"iterdpo-chain-it2-{ids[1]}.out").read_text()
    assert "iter 1 train: running" in log1 and "iter 2" not in log1
    assert "iter 1 train: done already, skipped" in log2 and "iter 2 train: running" in log2


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_killed_and_requeued_job_finishes_the_run(toy_cache, tmp_path):
    res = iterdpo("slurm", "submit", "/dev/null", f"run.output_dir={tmp_path}", "run.name=rq", "run.iterations=1", *TINY)
    job = res.stdout.split("as job ")[1].split()[0]
    root = tmp_path / "rq"
    deadline = time.time() + 300
    while not (root / "iter_1" / "sample" / "manifest.json").exists():
        assert time.time() < deadline, "the job never finished its sample stage"
        assert slurm.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), slurm.job_state(job)
        time.sleep(0.2)
    sampled = json.loads((root / "iter_1" / "sample" / "manifest.json").read_text())["finished_at"]
    subprocess.run(["scontrol", "requeue", job], check=True)  # kills the running job, queues it again
    assert slurm.wait(job, poll=1.0) == "COMPLETED"
    log = (root / "slurm" / f"iterdpo-rq-{job}.out").read_text()
    assert "(restart 0)" in log and "(restart 1)" in log and "DUE TO JOB REQUEUE" in log
    assert "iter 1 sample: done already, skipped" in log  # resumed, not redone
    assert json.loads((root / "iter_1" / "sample" / "manifest.json").read_text())["finished_at"] == sampled
    summary = json.loads((root / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1]

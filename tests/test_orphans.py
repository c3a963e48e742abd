"""A worker whose launcher dies stops within seconds (iterdpo.distributed.die_with_launcher).

torch's launcher starts each worker in a session of its own, so ``kill -9`` of an
``accelerate launch`` process group used to leave both training workers running: they
finished their stage and committed it while a restarted run worked on the same directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["run.iterations=1", "data.prompts_per_iteration=24", "sample.n=4", "evaluate.num_prompts=8",
         "train.batch_size=2", "score.shard_rows=16", "score.batch_tokens=512"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has stopped; its reaper (init) collects it


@pytest.mark.slow
def test_killing_the_launcher_stops_both_workers_and_a_restart_finishes(toy_cache, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    over = [f"run.output_dir={tmp_path}", *SMALL]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    log = open(tmp_path / "launch.log", "w")
    launcher = subprocess.Popen([*launch, "-m", "iterdpo", "run", *over, "train.epochs=40"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    train_tmp = tmp_path / "toy" / "iter_1" / ".train.tmp"
    deadline = time.time() + 900  # a hang guard, not a speed check
    while not train_tmp.exists():
        assert launcher.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(2.0)  # both ranks are inside the training loop
    workers = children(launcher.pid)
    assert len(workers) == 2, workers
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's whole process group, as `kill -9 -- -<pid>`
    launcher.wait()
    stop = time.time() + 10
    while any(alive(w) for w in workers) and time.time() < stop:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), f"orphaned workers still running: {[w for w in workers if alive(w)]}"
    time.sleep(1.0)
    assert not (tmp_path / "toy" / "iter_1" / "train").exists()  # nothing committed behind the user's back
    # the restart (one process, shorter training: the train stage never committed, so its key is free)
    p = subprocess.run([sys.executable, "-m", "iterdpo", "run", *over, "train.epochs=1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "iter 1 score: done already" in p.stdout and "iter 1 train: running" in p.stdout
    summary = json.loads((tmp_path / "toy" / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1]

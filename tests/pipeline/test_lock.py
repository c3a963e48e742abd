"""The run lock: a second process on a run directory exits 2 at once naming the holder; a
rank lock left by an older launch's worker blocks a new launch; the OS frees locks on SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from iterdpo.pipeline.lock import RunLock, RunLocked

HOLD = "import sys, time; from iterdpo.pipeline.lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
# a worker (rank 1) of a launch whose rank 0 was killed: it still holds its rank lock
ORPHAN = ("import fcntl, json, os, sys, time; f = open(sys.argv[1] + '/.lock.rank1', 'a+'); fcntl.flock(f.fileno(), fcntl.LOCK_EX);"
          " f.write(json.dumps({'pid': os.getpid(), 'host': 'h', 'rank': 1, 'started': 't'})); f.flush(); print('held', flush=True); time.sleep(600)")


def hold(root, code=HOLD) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_process_exits_2_naming_the_holder(tmp_path):
    root = tmp_path / "toy"
    holder = hold(root)
    try:
        r = subprocess.run([sys.executable, "-m", "iterdpo", "run", f"run.output_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert f"{root} is in use by pid {holder.pid} on host" in r.stderr and "started" in r.stderr
        assert sorted(p.name for p in root.iterdir()) == [".lock"]  # nothing written: no config.yaml, no stage
        with pytest.raises(RunLocked):
            RunLock(root).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunLock(root).acquire().release()  # the OS released the killed holder's lock


def test_rank_lock_of_an_older_launch_blocks_rank_0(tmp_path):
    root = tmp_path / "run"
    orphan = hold(root, ORPHAN)
    try:
        with pytest.raises(RunLocked, match=rf"older launch still holds .lock.rank1: pid {orphan.pid}"):
            RunLock(root).acquire()
    finally:
        orphan.send_signal(signal.SIGKILL)
        orphan.wait()
    time.sleep(0.1)
    RunLock(root).acquire().release()

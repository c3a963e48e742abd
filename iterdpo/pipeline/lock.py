"""The run lock: one launch at a time works in a run directory.

Rank 0 (or the single process) holds ``fcntl.flock`` on ``<run dir>/.lock``, which names
its pid, host and start time. A second process on the same run directory fails at once
with :class:`RunLocked` naming the holder (``iterdpo run`` exits 2). Under a launcher every
rank r > 0 also holds ``.lock.rank<r>``; a starting rank 0 refuses to run while any rank
lock is still held: a worker of an older launch that outlived its rank 0 (killed launch,
orphaned process) would otherwise keep writing into the shared stage folders.

The OS releases flock locks when a process dies, SIGKILL included, so a requeued Slurm job
takes the run over without any cleanup. ``flock`` needs a file system that supports it
(local disks, NFSv4, Lustre and GPFS with flock enabled).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from iterdpo import distributed as dist
from iterdpo.records import RecordError


class RunLocked(RecordError):
    """Another process holds the run directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "an unknown process"
    return f"pid {info.get('pid')} on host {info.get('host')} (started {info.get('started')}, rank {info.get('rank', 0)})"


def _try_flock(path: Path):
    """An open file holding an exclusive flock on ``path``, or None when another process holds it."""
    f = open(path, "a+")  # noqa: SIM115 - kept open: the lock lives as long as the file
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _stamp(f, rank: int) -> None:
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "rank": rank,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    f.flush()


class RunLock:
    """The lock of one process on a run directory; :meth:`release` (or process exit) frees it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.file = None

    def acquire(self) -> RunLock:
        """Take this rank's lock (collective under a launcher: every rank must call it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        rank, world = dist.rank(), dist.world_size()
        if rank == 0:
            main = self.root / ".lock"
            f = _try_flock(main)
            if f is None:
                raise RunLocked(f"{self.root} is in use by {_holder(main)}: wait for it to finish or stop it; "
                                "another run needs another run.name")
            for other in sorted(self.root.glob(".lock.rank*")):  # before this launch's ranks take theirs
                g = _try_flock(other)
                if g is None:
                    f.close()
                    raise RunLocked(f"{self.root}: a process of an older launch still holds {other.name}: "
                                    f"{_holder(other)}; stop it before starting this run again")
                g.close()
            _stamp(f, 0)
            self.file = f
        if world > 1:
            dist.barrier()  # rank 0 has checked for older launches' ranks (a failure there stops the launch)
            if rank != 0:
                mine = self.root / f".lock.rank{rank}"
                f = _try_flock(mine)
                if f is None:
                    raise RunLocked(f"{self.root}: {mine.name} is held by {_holder(mine)}")
                _stamp(f, rank)
                self.file = f
        return self

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
            self.file.close()
            self.file = None

"""Process-group helpers for stages run under ``accelerate launch`` or ``torchrun``.

The launcher sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE > 1`` the
loop runs the sharded stages (score, train) on every rank and the others on rank 0 while
the rest wait at a barrier. The process group is created once, through accelerate's
``PartialState`` (gloo on CPU, nccl on GPU, DeepSpeed's when the launcher asked for it),
so the Accelerator that training builds later reuses it.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_watched = False


def die_with_launcher() -> None:
    """Make this worker die (SIGKILL) the moment its launcher process dies.

    torch's launcher (``accelerate launch``, ``torchrun``) starts each worker in a session
    of its own, so ``kill -9`` of the launcher or of its process group leaves the workers
    running: they would finish their stage and commit it while a restarted run works on
    the same directory. ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` asks the kernel to kill this
    process when its parent exits. If the parent already died before the call (the
    worker was re-parented to init or a subreaper), exit at once. Linux only; a no-op
    elsewhere. Called once per process, from :func:`init`.
    """
    global _watched
    if _watched or not sys.platform.startswith("linux"):
        return
    _watched = True
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not permitted here (a seccomp sandbox): nothing more to do
    if orphaned():
        os.kill(os.getpid(), signal.SIGKILL)  # the launcher died before the death signal was armed


def orphaned() -> bool:
    """True when this process was re-parented to init: its launcher is gone.

    A launcher that *is* pid 1 (``accelerate launch`` as a container's entry point) is
    recognised by its command line.
    """
    if os.getppid() != 1:
        return False
    try:
        cmdline = open("/proc/1/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return not any(w in cmdline for w in ("accelerate", "torchrun", "torch.distributed", "deepspeed", "iterdpo"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Create the process group when launched with more than one process (no-op otherwise).

    accelerate only builds a multi-process state on CPU when told so: ``cpu=True`` gives
    gloo DDP, and under DeepSpeed (``ACCELERATE_USE_DEEPSPEED``, ``DS_ACCELERATOR=cpu``)
    it needs ``backend="gloo"`` with ``cpu=False`` (``cpu=True`` would turn DeepSpeed
    off); without either it silently runs every rank as a single process.
    """
    if world_size() == 1:
        return
    die_with_launcher()
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available():
        PartialState()
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        PartialState(backend="gloo")
    else:
        PartialState(cpu=True)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world_size() > 1:
        from accelerate import PartialState

        init()
        PartialState().wait_for_everyone()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    import torch.distributed as dist

    init()
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

"""Process-group helpers for stages run under ``accelerate launch`` or ``torchrun``.

The launcher sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE > 1`` the
loop runs the sharded stages (score, train) on every rank and the others on rank 0 while
the rest wait at a barrier. The process group is created once, through accelerate's
``PartialState`` (gloo on CPU, nccl on GPU, DeepSpeed's when the launcher asked for it),
so the Accelerator that training builds later reuses it.
"""

from __future__ import annotations

import os


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

"""Keep a launcher's rank variables away from vLLM engines and servers.

Under ``accelerate launch``, ``torchrun``, DeepSpeed or ``srun`` every rank's environment
names its place in the *training* job (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``, torchelastic's variables). A vLLM engine or ``vllm serve``
started from rank 0 would read them as its own distributed setup (torch's ``env://``
rendezvous, vLLM's own rank and world size) and try to join the trainer's group or wait
for ranks that never come. Engines and servers therefore start without them:
:func:`clean_env` for a child's environment, :func:`launcher_vars_removed` around an
in-process engine (its worker processes inherit ``os.environ`` when they start).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

LAUNCHER_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "NODE_RANK", "CROSS_RANK", "CROSS_SIZE",
    "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "PMI_RANK", "PMI_SIZE",
)
LAUNCHER_PREFIXES = ("TORCHELASTIC_",)


def is_launcher_var(name: str) -> bool:
    return name in LAUNCHER_VARS or name.startswith(LAUNCHER_PREFIXES)


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) without the launcher's rank variables."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if not is_launcher_var(k)}


@contextmanager
def launcher_vars_removed(env: MutableMapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Remove the launcher's variables from ``env`` (default ``os.environ``) for the block;
    put them back afterwards (the rank's own code still needs them). Yields what was removed."""
    env = os.environ if env is None else env
    removed = {k: env[k] for k in list(env) if is_launcher_var(k)}
    for k in removed:
        del env[k]
    try:
        yield removed
    finally:
        env.update(removed)

"""Failpoints: kill the process at an exact point of a stage commit (a testing aid).

Set ``ITERDPO_FAILPOINT=<stage>:<point>`` (optionally ``<stage>@<k>:<point>`` for one
iteration only) and the process SIGKILLs itself, the way an OOM killer, a preempted node
or ``kill -9`` would stop it, when the engine's commit of that stage reaches the point:

    before_write   the stage's temporary folder exists and is empty; nothing computed yet
    mid_write      the stage's first output file is half written: the first row group of
                   its first Parquet file is on disk, the rest is not (stages without a
                   Parquet output die once their write callback returns, manifest unwritten)
    before_commit  every output file and the manifest are in the temporary folder, not yet
                   renamed into place
    after_commit   the stage is published; nothing after it (summary, next stage) has run

``<stage>`` is the stage folder's name: sample, score, select, annotate, train, evaluate,
eval_responses, baseline, and SeRA's offline and bootstrap. Only :meth:`RunDir.commit`
reads the variable (and the Parquet writers, through :func:`mid_write`, while a commit of
the armed stage runs), so no stage has code of its own for it. The resume tests
(tests/test_failpoints.py) kill every stage of the default, SeRA and APL pipelines at
every point and check the resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

POINTS = ("before_write", "mid_write", "before_commit", "after_commit")
ENV = "ITERDPO_FAILPOINT"

_armed_tmp: Path | None = None  # the temporary folder of the running commit armed with mid_write


def armed() -> tuple[str, int | None, str] | None:
    """(stage, iteration or None, point) from ``ITERDPO_FAILPOINT``, None when unset; ValueError when malformed."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    stage, sep, point = spec.rpartition(":")
    if not sep or point not in POINTS or not stage:
        raise ValueError(f"{ENV}={spec!r}: expected <stage>[@<iteration>]:<point> with point one of {POINTS}")
    name, _, k = stage.partition("@")
    return name, int(k) if k else None, point


def _matches(path: Path) -> str | None:
    """The armed point when ``path`` (a stage folder runs/<name>/[iter_<k>/]<stage>) is the armed stage."""
    fp = armed()
    if fp is None:
        return None
    name, k, point = fp
    if path.name != name:
        return None
    if k is not None and path.parent.name != f"iter_{k}":
        return None
    return point


def die(where: str) -> None:
    """SIGKILL this process now (flushes stdout/stderr first so the test log shows where)."""
    print(f"[iterdpo] failpoint {os.environ.get(ENV)}: killing process {os.getpid()} at {where}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def hit(path: Path, point: str) -> None:
    """Called by :meth:`RunDir.commit` at each point; dies if ``point`` is armed for ``path``'s stage."""
    if _matches(path) == point:
        die(f"{point} of {path}")


@contextmanager
def writing(path: Path, tmp: Path) -> Iterator[None]:
    """Around a commit's write callback: arms :func:`mid_write` for files under ``tmp``.

    A stage that wrote no Parquet file into ``tmp`` dies when its callback returns.
    """
    global _armed_tmp
    armed = _matches(path) == "mid_write"
    previous, _armed_tmp = _armed_tmp, (Path(tmp).resolve() if armed else None)
    try:
        yield
        if armed:
            die(f"mid_write of {path} (after its write callback: it wrote no Parquet file)")
    finally:
        _armed_tmp = previous


def mid_write(file: Path) -> bool:
    """True when writing ``file`` must stop half-way (it lies in the armed stage's temporary folder)."""
    if _armed_tmp is None:
        return False
    try:
        Path(file).resolve().relative_to(_armed_tmp)
    except ValueError:
        return False
    return True


def write_half_then_die(table, tmp_file: Path) -> None:
    """Write the first half of ``table`` as one row group of ``tmp_file``, flush it to disk, die."""
    import pyarrow.parquet as pq

    half = max(table.num_rows // 2, 1) if table.num_rows else 0
    f = open(tmp_file, "wb")  # noqa: SIM115 - the process dies with it open, as a killed writer would
    w = pq.ParquetWriter(f, table.schema)
    w.write_table(table.slice(0, half), row_group_size=max(half, 1))
    f.flush()
    os.fsync(f.fileno())
    die(f"mid_write of {tmp_file} ({half} of {table.num_rows} rows written)")

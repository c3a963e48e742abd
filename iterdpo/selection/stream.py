"""Streaming selection: read Parquet batch by batch, hold one prompt plus a bounded top-k.

The selectors of :mod:`iterdpo.selection` work on any :data:`base.Source`. Given a
:class:`pyarrow.Table` they compute in memory; given a Parquet path (file or folder) or a
:class:`pyarrow.RecordBatchReader` they stream it with the pieces below and return the
*same* selection (tests/selection/test_stream.py checks it on random batch splits):

- :func:`open_stream`: ``ParquetFile.iter_batches(columns=[only what the selector
  needs], batch_size=...)``; the other columns never leave the disk. The row count comes
  from the Parquet footer, without reading rows.
- :class:`PromptChunks`: regroups the batches into tables of *complete* prompts. The
  rows of the last prompt of a batch are carried into the next batch (the prompt may go on
  there), so at most ``batch_size + rows of one prompt`` rows are held. The scored table is
  written prompt by prompt (the samplers emit a prompt's n completions together and
  scoring keeps row order), and per-prompt selection relies on it: a prompt whose rows are
  not contiguous raises :class:`records.RecordError` naming the source, the row and the
  prompt id (a split prompt would otherwise silently count as two prompts). Checking
  that needs the ids of the finished prompts: one string per prompt, not per row.
- :class:`TopK`: the first ``cap`` items of a stream in a ranking order, a bounded partial
  sort (held items <= ``2 cap + one push``). Ranking = value (ascending for ``smallest``,
  descending for ``largest``, none for ``random``), then the seeded key, then the stable
  ids: exactly the order of :func:`base.rank` on the canonical rows.
- :func:`write_parquet`: the selected rows through :class:`pyarrow.parquet.ParquetWriter`,
  a row group per batch, into a hidden temporary file renamed into place.

What cannot be bounded, by nature: a corpus-level *fraction* keeps ``ceil(f * prompts
with a pair)`` items, so the heap is capped by ``f`` times the number of prompts (counted
by a pass over the ``prompt_id`` column alone when the source can be read twice; a
one-pass reader keeps one item per prompt). D-optimal / ARM selection needs the n x d
feature matrix in memory and is not streamed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from iterdpo import failpoints, records

BATCH = 8_192  # rows per read batch: benchmarks/selection.md found 8k faster and 4x leaner than 64k


@dataclass
class Stream:
    """Record batches of the needed columns of a source.

    ``num_rows``: from the Parquet footer or the table; None for a one-pass reader.
    ``columns``: the columns the batches carry (required + present optional ones).
    """

    batches: Iterator[pa.RecordBatch]
    columns: list[str]
    num_rows: int | None
    where: str


def _files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise records.RecordError(f"{path}: no .parquet files in this folder")
    return files


def _require(names: list[str], columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise records.RecordError(f"{where}: missing column(s) {missing}; has {list(names)}")


def open_stream(source, columns: list[str], where: str = "input", optional: tuple[str, ...] = (), batch_size: int = BATCH) -> Stream:
    """Batches of only ``columns`` (plus the ``optional`` ones present) of a source.

    A Parquet file or folder (files in name order) is read with
    ``ParquetFile.iter_batches``; a table is sliced; a reader is consumed as it comes.
    Errors name the path for Parquet sources, ``where`` otherwise.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(source, (str, Path)):
        path = Path(source)
        files = _files(path)
        names = pq.read_schema(files[0]).names
        _require(names, columns, str(path))
        keep = columns + [c for c in optional if c in names]
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

        def gen() -> Iterator[pa.RecordBatch]:
            for f in files:
                yield from pq.ParquetFile(f).iter_batches(columns=keep, batch_size=batch_size)

        return Stream(gen(), keep, rows, str(path))
    if isinstance(source, pa.RecordBatchReader):
        names = source.schema.names
        _require(names, columns, where)
        keep = columns + [c for c in optional if c in names]
        return Stream((b.select(keep) for b in source), keep, None, where)
    if isinstance(source, pa.Table):
        _require(source.column_names, columns, where)
        keep = columns + [c for c in optional if c in source.column_names]
        return Stream(iter(source.select(keep).to_batches(max_chunksize=batch_size)), keep, source.num_rows, where)
    raise TypeError(f"{where}: expected a pyarrow Table, RecordBatchReader or Parquet path, got {type(source).__name__}")


def rereadable(source) -> bool:
    """Whether a second pass is possible (a reader is consumed by the first)."""
    return isinstance(source, (str, Path, pa.Table))


def count_runs(source, key: str = "prompt_id", where: str = "input", batch_size: int = BATCH) -> int:
    """Number of runs of equal ``key`` values (= prompts of a prompt-contiguous source).

    Reads the ``key`` column alone, batch by batch, holding one value between batches.
    """
    runs, last = 0, None
    for b in open_stream(source, [key], where, batch_size=batch_size).batches:
        if b.num_rows == 0:
            continue
        col = b.column(0)
        starts = _run_starts(col)
        runs += len(starts) - (1 if last is not None and col[0].as_py() == last else 0)
        last = col[b.num_rows - 1].as_py()
    return runs


def _run_starts(col: pa.Array) -> np.ndarray:
    """Positions where a new run of equal values begins (0 included)."""
    n = len(col)
    if n == 0:
        return np.zeros(0, np.int64)
    change = np.asarray(pc.not_equal(col.slice(1), col.slice(0, n - 1)).to_numpy(zero_copy_only=False), dtype=bool)
    return np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)


class PromptChunks:
    """Tables of complete prompts from a prompt-contiguous stream, with their first row.

    Iterating yields ``(chunk, start)``: ``chunk`` holds whole prompts only (in input row
    order), ``start`` is the source row of its first row. Held state: the current batch,
    the carried rows of one unfinished prompt, and the ids of finished prompts.
    ``max_rows_held`` / ``max_prompt_rows`` record the largest table held and the largest
    prompt seen, so tests can check the bound ``max_rows_held <= batch + max_prompt_rows``.
    """

    def __init__(self, stream: Stream, key: str = "prompt_id"):
        self.stream, self.key = stream, key
        self.max_rows_held = 0
        self.max_prompt_rows = 0
        self.max_batch_rows = 0
        self.rows = 0

    def _check(self, ids: list, starts: np.ndarray, first: int, seen: set) -> None:
        where = self.stream.where
        for i, pid in enumerate(ids):
            if pid is None:
                raise records.RecordError(f"{where}: row {first + int(starts[i])}, field {self.key!r}: missing (null)")
        if len(set(ids)) == len(ids) and not seen.intersection(ids):
            return
        done: set = set()
        for i, pid in enumerate(ids):
            if pid in seen or pid in done:
                raise records.RecordError(
                    f"{where}: row {first + int(starts[i])}, field {self.key!r}: the rows of prompt {pid!r} are not contiguous "
                    f"(it appeared earlier); streaming selection needs each prompt's rows together, as sampling and scoring "
                    f"write them: sort the file by {self.key}, or pass an in-memory pyarrow Table"
                )
            done.add(pid)

    def __iter__(self) -> Iterator[tuple[pa.Table, int]]:
        seen: set = set()
        carry: pa.Table | None = None
        carry_start = 0
        offset = 0
        for batch in self.stream.batches:
            if batch.num_rows == 0:
                continue
            self.max_batch_rows = max(self.max_batch_rows, batch.num_rows)
            t = pa.Table.from_batches([batch])
            start = offset
            if carry is not None:
                t, start = pa.concat_tables([carry, t]), carry_start
            offset += batch.num_rows
            self.max_rows_held = max(self.max_rows_held, t.num_rows)
            col = t.column(self.key).combine_chunks()
            starts = _run_starts(col)
            ids = col.take(pa.array(starts)).to_pylist()
            self._check(ids, starts, start, seen)
            sizes = np.diff(np.append(starts, t.num_rows))
            self.max_prompt_rows = max(self.max_prompt_rows, int(sizes.max()))
            last = int(starts[-1])
            seen.update(ids[:-1])
            if last > 0:
                self.rows += last
                yield t.slice(0, last), start
            carry, carry_start = t.slice(last), start + last
        if carry is not None and carry.num_rows:
            self.rows += carry.num_rows
            yield carry, carry_start


class TopK:
    """The first ``cap`` rows of a stream of small tables, in ranking order (bounded).

    Each pushed table has a float64 column ``_value``, a uint64 column ``_key`` (seeded
    tie-breaker) and the ``ids`` columns (stable ids, the last tie-breakers), plus any
    payload. Order: ``_value`` ascending (``smallest``) or descending (``largest``; absent
    for ``random``), then ``_key``, then ``ids`` ascending. Whenever more than ``2 cap``
    rows are held they are sorted and cut to ``cap``: amortised O(n log cap) time,
    ``max_held <= 2 cap + largest push`` rows. ``cap=None`` keeps every row.
    """

    def __init__(self, how: str, cap: int | None, ids: list[str]):
        if how not in ("smallest", "largest", "random"):
            raise ValueError(f"order must be smallest, largest or random, got {how!r}")
        self.how, self.cap, self.ids = how, cap, ids
        self.parts: list[pa.Table] = []
        self.held = 0
        self.max_held = 0
        self.pushed = 0

    def _sort_keys(self) -> list[tuple[str, str]]:
        first = [] if self.how == "random" else [("_value", "ascending" if self.how == "smallest" else "descending")]
        return first + [("_key", "ascending")] + [(c, "ascending") for c in self.ids]

    def _ranked(self, limit: int | None) -> pa.Table:
        if not self.parts:
            return None
        t = pa.concat_tables(self.parts)
        order = pc.sort_indices(t, sort_keys=self._sort_keys())
        if limit is not None:
            order = order.slice(0, limit)
        return t.take(order)

    def push(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.parts.append(table)
        self.held += table.num_rows
        self.pushed += table.num_rows
        self.max_held = max(self.max_held, self.held)
        if self.cap is not None and self.held > 2 * self.cap:
            t = self._ranked(self.cap)
            self.parts, self.held = [t], t.num_rows

    def top(self, keep: int, schema: pa.Schema | None = None) -> pa.Table | None:
        """The first ``keep`` rows (keep <= cap) in ranking order; None when nothing was pushed."""
        if self.cap is not None and keep > self.cap:
            raise ValueError(f"asked for the top {keep} of a heap capped at {self.cap}")
        return self._ranked(keep)


def check_unique_hashes(hashes: list[np.ndarray], source, column: str, where: str) -> None:
    """Raise if two rows share an id, given the uint64 hash of each row's id in row order.

    8 bytes a row (the one per-row state of a stream); the ids themselves are read back
    only to name a duplicate (for a one-pass reader the error names the rows).
    """
    if not hashes:
        return
    h = np.concatenate(hashes)
    s = np.sort(h)
    dup = np.flatnonzero(s[1:] == s[:-1])
    if not dup.size:
        return
    for v in s[dup]:  # confirm by the ids (a 64-bit hash collision is not a duplicate)
        rows = np.flatnonzero(h == v)
        if not rereadable(source):
            raise records.RecordError(f"{where}: rows {int(rows[0])} and {int(rows[1])}, field {column!r}: duplicate {column}")
        vals = values_at(source, rows, column, where)
        for j in range(1, len(rows)):
            first = vals.index(vals[j])
            if first < j:
                raise records.RecordError(
                    f"{where}: row {int(rows[j])}, field {column!r}: duplicate {column} {vals[j]!r} (also at row {int(rows[first])})"
                )


def values_at(source, rows: np.ndarray, column: str, where: str) -> list:
    """The values of ``column`` at source rows ``rows`` (sorted), one more pass over that column."""
    out, offset, want = [], 0, [int(r) for r in rows]
    i = 0
    for b in open_stream(source, [column], where).batches:
        while i < len(want) and want[i] < offset + b.num_rows:
            out.append(b.column(0)[want[i] - offset].as_py())
            i += 1
        offset += b.num_rows
    return out


def write_parquet(table: pa.Table | Iterable[pa.RecordBatch], path: Path, schema: pa.Schema | None = None, batch_size: int = BATCH) -> int:
    """Write batches with a :class:`pyarrow.parquet.ParquetWriter`, atomically.

    A table is written ``batch_size`` rows at a time (one row group each); an iterable of
    batches as it comes (``schema`` required). The file appears under its name only once
    complete (hidden temporary file + ``os.replace``), like :func:`records.write_table`.
    Returns the rows written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, pa.Table):
        schema = table.schema
        batches: Iterable[pa.RecordBatch] = table.to_batches(max_chunksize=batch_size)
    else:
        if schema is None:
            raise ValueError("write_parquet: a stream of batches needs its schema")
        batches = table
    tmp = path.with_name(f".{path.name}.tmp")
    if failpoints.mid_write(path):  # ITERDPO_FAILPOINT=<stage>:mid_write (testing aid)
        failpoints.write_half_then_die(pa.Table.from_batches(list(batches), schema=schema), tmp)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as w:
            for b in batches:
                w.write_batch(b, row_group_size=max(batch_size, 1))
                rows += b.num_rows
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rows


def fraction_cap(source, fraction: float | None, count: int | None, where: str, batch_size: int = BATCH) -> int | None:
    """Heap cap of a per-prompt corpus cut: ``count``, or ``ceil(fraction * prompts)``
    (prompts counted on the ``prompt_id`` column alone) when the source can be re-read,
    else None (keep one item per prompt)."""
    if count is not None:
        return max(count, 0)
    if fraction is not None and fraction >= 1.0 or not rereadable(source):
        return None
    return math.ceil(fraction * count_runs(source, "prompt_id", where, batch_size) - 1e-9) if fraction is not None else None

"""What every selector shares: columnar input, canonical order, seeded tie-breaking.

Order independence works the same way in every selector: the rows are first put into a
*canonical order* (sorted by their stable ids, e.g. ``(prompt_id, completion_id)``), all
arithmetic happens in that order, and every ranking ends with a seeded hash of the ids
(:func:`pair_keys`) and then the canonical position. The same inputs and seed therefore
give the same selection whatever order the rows arrive in.

Inputs are read column by column (Arrow -> numpy); no selector builds a python dict per
row, so a million candidate pairs cost seconds, not minutes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from iterdpo import records

ORDERS = ("smallest", "largest", "random")

Source = pa.Table | pa.RecordBatchReader | str | Path


def tie_key(seed: int, *ids: str) -> str:
    """Seeded, order-independent tie-breaker: a random order that ignores input row order."""
    return hashlib.sha1(":".join((str(seed), *ids)).encode()).hexdigest()


# --- columnar input --------------------------------------------------------------------


def read_columns(source: Source, columns: list[str], where: str = "input", optional: tuple[str, ...] = ()) -> pa.Table:
    """Only the named columns of a table, a stream of record batches or a Parquet file/folder.

    A Parquet source is read column-wise (the other columns never leave the disk); a
    :class:`pyarrow.RecordBatchReader` is consumed batch by batch keeping only ``columns``.
    Columns in ``optional`` are kept when present. Raises :class:`records.RecordError`
    naming ``where`` and the missing columns.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not files:
            raise records.RecordError(f"{path}: no .parquet files in this folder")
        names = pq.read_schema(files[0]).names
        require_columns(names, columns, str(path))
        keep = columns + [c for c in optional if c in names]
        return pa.concat_tables([pq.read_table(f, columns=keep) for f in files])
    if isinstance(source, pa.RecordBatchReader):
        names = source.schema.names
        require_columns(names, columns, where)
        keep = columns + [c for c in optional if c in names]
        schema = pa.schema([source.schema.field(c) for c in keep])
        return pa.Table.from_batches([b.select(keep) for b in source], schema=schema)
    if not isinstance(source, pa.Table):
        raise TypeError(f"{where}: expected a pyarrow Table, RecordBatchReader or Parquet path, got {type(source).__name__}")
    require_columns(source.column_names, columns, where)
    return source.select(columns + [c for c in optional if c in source.column_names])


def require_columns(names: list[str], columns: list[str], where: str) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise records.RecordError(f"{where}: missing column(s) {missing}; has {list(names)}")


def float_column(table: pa.Table, name: str, where: str, offset: int = 0) -> np.ndarray:
    """A float64 column as numpy; nulls and NaNs raise an error naming the first bad row
    (``offset + i``: a streamed chunk passes the source row of its first row)."""
    arr = table.column(name)
    values = np.asarray(pc.fill_null(pc.cast(arr, pa.float64()), np.nan).to_numpy(), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise records.RecordError(f"{where}: row {offset + int(bad[0])}, field {name!r}: not a finite number ({values[bad[0]]})")
    return values


def canonical(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows sorted by the given id columns: the order every selector computes in."""
    return table.take(pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys]))


def check_unique(table: pa.Table, key: str, where: str) -> None:
    """Raise if an id column has a duplicate (naming the first duplicated id)."""
    col = table.column(key)
    if pc.count_distinct(col).as_py() != len(col):
        counts = pc.value_counts(col)
        dup = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        raise records.RecordError(f"{where}: duplicate {key} {dup[0].as_py()!r}")


def group_codes(sorted_ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """0, 0, 1, 1, 1, 2, ... : the group index of each row of an already sorted id column."""
    col = sorted_ids.combine_chunks() if isinstance(sorted_ids, pa.ChunkedArray) else sorted_ids
    n = len(col)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.asarray(pc.not_equal(col.slice(1), col.slice(0, n - 1)).to_numpy(zero_copy_only=False), dtype=bool)
    return np.concatenate([[0], np.cumsum(change)]).astype(np.int64)


def text_codes(texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Equal texts get equal integer codes (so identical responses can be skipped)."""
    enc = pc.dictionary_encode(texts)
    enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
    return np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)


# --- seeded keys -----------------------------------------------------------------------

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijective mixer of uint64 (vectorised)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def id_hashes(ids: pa.ChunkedArray | pa.Array | list[str]) -> np.ndarray:
    """uint64 hash of each id string (blake2b, stable across runs and machines)."""
    values = ids.to_pylist() if not isinstance(ids, list) else ids
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") for v in values),
        dtype=np.uint64,
        count=len(values),
    )


def row_keys(h: np.ndarray, seed: int) -> np.ndarray:
    """Seeded random keys of single ids (hash ``h`` from :func:`id_hashes`)."""
    s = _splitmix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    return _splitmix(h ^ s)


def pair_keys(ha: np.ndarray, hb: np.ndarray, seed: int) -> np.ndarray:
    """Seeded random keys of ordered id pairs: a function of (seed, a, b) only."""
    with np.errstate(over="ignore"):
        return _splitmix(row_keys(ha, seed) * np.uint64(0x9E3779B97F4A7C15) ^ hb)


def uniform(keys: np.ndarray) -> np.ndarray:
    """Keys -> floats in the open interval (0, 1) (for seeded Gumbel / Bernoulli draws)."""
    return ((keys >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


# --- ranking ---------------------------------------------------------------------------


def rank(values: np.ndarray, keys: np.ndarray, how: str) -> np.ndarray:
    """Indices ordered by ``values`` (ascending for ``smallest``, descending for ``largest``)
    then by seeded ``keys`` then by position; ``random`` orders by keys alone.

    Positions are canonical positions, so the order is fully determined by ids and seed.
    """
    pos = np.arange(len(keys))
    if how == "smallest":
        return np.lexsort((pos, keys, values))
    if how == "largest":
        return np.lexsort((pos, keys, -values))
    if how == "random":
        return np.lexsort((pos, keys))
    raise ValueError(f"order must be one of {ORDERS}, got {how!r}")


def first_per_group(groups: np.ndarray, order: np.ndarray) -> np.ndarray:
    """For each group, the first index of ``order`` that belongs to it (groups ascending)."""
    g = groups[order]
    stable = np.argsort(g, kind="stable")
    gs = g[stable]
    first = np.concatenate([[True], gs[1:] != gs[:-1]]) if len(gs) else np.zeros(0, bool)
    return order[stable[first]]


def top_count(n: int, fraction: float | None, count: int | None) -> int:
    """How many of ``n`` items to keep: ``count`` (capped at n) or ``ceil(fraction * n)``."""
    if count is not None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return min(count, n)
    if fraction is None or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(n, int(np.ceil(fraction * n - 1e-9)))


# --- pairs -----------------------------------------------------------------------------


def within_group_pairs(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j), i < j, of rows in the same group; ``groups`` sorted ascending.

    Vectorised per distinct group size with ``np.triu_indices``; pairs come out ordered by
    (group, i, j). A group of n rows gives n(n-1)/2 pairs.
    """
    if len(groups) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], groups[1:] != groups[:-1]]))
    sizes = np.diff(np.append(starts, len(groups)))
    out_a, out_b, out_g = [], [], []
    for n in np.unique(sizes):
        if n < 2:
            continue
        s = starts[sizes == n]
        ia, ib = np.triu_indices(int(n), 1)
        out_a.append((s[:, None] + ia[None, :]).ravel())
        out_b.append((s[:, None] + ib[None, :]).ravel())
        out_g.append(np.repeat(s, len(ia)))
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b, g = np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_g)
    order = np.lexsort((b, a, g))
    return a[order].astype(np.int64), b[order].astype(np.int64)


def candidates(prompt_ids: pa.Array, a_ids: pa.Array, b_ids: pa.Array, margins: np.ndarray, selector: str) -> pa.Table:
    """A CANDIDATES table from columns (no per-row python objects)."""
    n = len(margins)
    return pa.table(
        {
            "prompt_id": pa.array(prompt_ids, pa.string()),
            "a_id": pa.array(a_ids, pa.string()),
            "b_id": pa.array(b_ids, pa.string()),
            "margin": pa.array(np.asarray(margins, dtype=np.float64), pa.float64()),
            "selector": pa.repeat(pa.scalar(selector, pa.string()), n),
        },
        schema=records.CANDIDATES,
    )

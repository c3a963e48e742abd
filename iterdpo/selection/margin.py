"""Margin-based selection before annotation (Yang et al., 2024; seed 001).

Two levels, applied to the scored responses of one iteration:

1. *Instance level*: among the N(N-1)/2 pairs of one prompt's responses keep one pair,
   the one with the ``smallest`` or ``largest`` absolute implicit-reward margin
   ``m(a, b) = |r(x,a) - r(x,b)|``, or ``random`` (the first two responses in
   ``completion_id`` order, as in the paper: the samples are i.i.d.).
2. *Corpus level*: of those per-prompt pairs keep ``ceil(corpus_fraction * count)``
   (or exactly ``corpus_count``), again by ``smallest``, ``largest`` or ``random`` margin.

Margins use summed rewards ``r = beta (logp_pi - logp_ref)`` (``sum``, the paper's better
variant, column ``reward``) or length-normalised rewards ``r / |y|`` (``length``, column
``reward_norm``); ``simpo`` uses ``reward_simpo``. Unlabelled pairs have no orientation
yet, hence the absolute value. Pairs of identical texts are never formed: they carry no
preference. Ties are broken by a seeded hash of the pair's ids, so the result does not
depend on input row order.

Vectorised: a million candidate pairs take a few seconds (benchmarks/selection.md).
A Parquet path or record-batch reader is *streamed* (:mod:`iterdpo.selection.stream`):
one batch plus one prompt's rows and a bounded heap of per-prompt picks are held, never
the whole table; a :class:`pyarrow.Table` is selected in memory. Both give the same rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iterdpo.selection import base, stream

MARGIN_COLUMNS = {"sum": "reward", "length": "reward_norm", "simpo": "reward_simpo"}


def margin_pairs(scored: base.Source, *, margin: str = "sum", where: str = "scored") -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All within-prompt pairs of distinct texts, in canonical order.

    Returns ``(rows, a, b, margins, groups)``: ``rows`` the scored columns in canonical
    ``(prompt_id, completion_id)`` order, ``a < b`` row indices into it, ``|r_a - r_b|``
    and the prompt group of each pair.
    """
    if margin not in MARGIN_COLUMNS:
        raise ValueError(f"margin must be one of {sorted(MARGIN_COLUMNS)}, got {margin!r}")
    col = MARGIN_COLUMNS[margin]
    rows = base.read_columns(scored, ["prompt_id", "completion_id", "completion", col], where)
    rows = base.canonical(rows, ["prompt_id", "completion_id"])
    base.check_unique(rows, "completion_id", where)
    return rows, *_distinct_pairs(rows, base.float_column(rows, col, where))


def _distinct_pairs(rows: pa.Table, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, |r_a - r_b|, group)`` of every within-prompt pair of distinct texts of ``rows``
    (canonical order, ``a < b``); ``r`` [rows] the margin column in that order."""
    groups = base.group_codes(rows.column("prompt_id"))
    a, b = base.within_group_pairs(groups)
    texts = base.text_codes(rows.column("completion"))
    distinct = texts[a] != texts[b]
    a, b = a[distinct], b[distinct]
    return a, b, np.abs(r[a] - r[b]), groups[a]


def select_margin(
    scored: base.Source,
    *,
    instance: str = "smallest",
    corpus: str = "smallest",
    corpus_fraction: float = 0.5,
    corpus_count: int | None = None,
    margin: str = "sum",
    seed: int = 0,
    batch_size: int = stream.BATCH,
) -> pa.Table:
    """SCORED -> CANDIDATES: one pair per prompt, then the corpus-level cut.

    Args:
        scored: SCORED table, record-batch stream or Parquet path (needs ``prompt_id``,
            ``completion_id``, ``completion`` and the margin's reward column).
        instance, corpus: ``smallest`` | ``largest`` | ``random``.
        corpus_fraction: keep ``ceil(fraction * prompts_with_a_pair)`` pairs ...
        corpus_count: ... or exactly this many (capped), when given.
        margin: ``sum`` | ``length`` | ``simpo``.
        seed: seeds the tie-breaking (and the ``random`` orders).
        batch_size: rows per read batch when ``scored`` is streamed (path or reader).

    Returns one row per kept pair, ``a_id < b_id``, sorted by ``(prompt_id, a_id)``.
    """
    if instance not in base.ORDERS or corpus not in base.ORDERS:
        raise ValueError(f"instance and corpus must be one of {base.ORDERS}")
    if not isinstance(scored, pa.Table):
        return stream_margin(scored, instance=instance, corpus=corpus, corpus_fraction=corpus_fraction,
                             corpus_count=corpus_count, margin=margin, seed=seed, batch_size=batch_size)
    rows, a, b, m, g = margin_pairs(scored, margin=margin)
    cid = rows.column("completion_id")
    h = base.id_hashes(cid)
    keys = base.pair_keys(h[a], h[b], seed)
    if instance == "random":  # the first pair in (a, b) order: pairs are already sorted so
        order = np.arange(len(a))
    else:
        order = base.rank(m, keys, instance)
    pick = base.first_per_group(g, order)  # one pair per prompt
    keep = base.top_count(len(pick), corpus_fraction, corpus_count)
    chosen = pick[base.rank(m[pick], keys[pick], corpus)[:keep]]
    chosen = np.sort(chosen)  # canonical (prompt_id, a_id, b_id) order
    pid = rows.column("prompt_id")
    name = _name(instance, corpus, corpus_fraction, corpus_count, margin)
    return base.candidates(pid.take(a[chosen]), cid.take(a[chosen]), cid.take(b[chosen]), m[chosen], name)


def _name(instance: str, corpus: str, corpus_fraction: float, corpus_count: int | None, margin: str) -> str:
    return f"margin:{instance}/{corpus}@{corpus_count if corpus_count is not None else corpus_fraction}/{margin}"


def chunk_pairs(chunk: pa.Table, col: str, where: str, start: int) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`margin_pairs` of a chunk of whole prompts (rows from source row ``start``).

    Returns ``(rows, h, h_raw, a, b, margins, groups)``: ``rows`` in canonical order,
    ``h`` the completion-id hashes in that order, ``h_raw`` in input order (for the
    source-wide duplicate check), then as :func:`margin_pairs`.
    """
    r_raw = base.float_column(chunk, col, where, offset=start)  # checked in input order: the error names the source row
    h_raw = base.id_hashes(chunk.column("completion_id"))
    order = np.asarray(pc.sort_indices(chunk, sort_keys=[("prompt_id", "ascending"), ("completion_id", "ascending")]).to_numpy(), np.int64)
    rows = chunk.take(pa.array(order))
    return rows, h_raw[order], h_raw, *_distinct_pairs(rows, r_raw[order])


def stream_margin(
    scored: base.Source,
    *,
    instance: str = "smallest",
    corpus: str = "smallest",
    corpus_fraction: float = 0.5,
    corpus_count: int | None = None,
    margin: str = "sum",
    seed: int = 0,
    batch_size: int = stream.BATCH,
    probe: dict | None = None,
) -> pa.Table:
    """:func:`select_margin` over a stream: same arguments, same rows.

    Reads ``prompt_id, completion_id, completion`` and the reward column batch by batch;
    per chunk of whole prompts picks each prompt's pair (instance level) and pushes the
    picks into a :class:`stream.TopK` capped at the corpus count (or ``ceil(fraction *
    prompts)``). Completion ids must be unique in the whole source (8-byte hash a row).
    ``probe``, when given, receives the held-state sizes (for tests).
    """
    if margin not in MARGIN_COLUMNS:
        raise ValueError(f"margin must be one of {sorted(MARGIN_COLUMNS)}, got {margin!r}")
    if instance not in base.ORDERS or corpus not in base.ORDERS:
        raise ValueError(f"instance and corpus must be one of {base.ORDERS}")
    base.top_count(0, corpus_fraction, corpus_count)  # validate before reading
    col = MARGIN_COLUMNS[margin]
    cap = stream.fraction_cap(scored, corpus_fraction, corpus_count, "scored", batch_size)
    st = stream.open_stream(scored, ["prompt_id", "completion_id", "completion", col], "scored", batch_size=batch_size)
    chunks = stream.PromptChunks(st)
    top = stream.TopK(corpus, cap, ["prompt_id"])
    hashes: list[np.ndarray] = []
    for chunk, start in chunks:
        rows, h, h_raw, a, b, m, g = chunk_pairs(chunk, col, st.where, start)
        hashes.append(h_raw)
        keys = base.pair_keys(h[a], h[b], seed)
        order = np.arange(len(a)) if instance == "random" else base.rank(m, keys, instance)
        pick = base.first_per_group(g, order)
        top.push(picks_table(rows, a[pick], b[pick], m[pick], keys[pick]))
    stream.check_unique_hashes(hashes, scored, "completion_id", st.where)
    keep = base.top_count(top.pushed, corpus_fraction, corpus_count)
    out = top.top(keep)
    if probe is not None:
        probe.update(cap=cap, max_heap=top.max_held, max_rows_held=chunks.max_rows_held,
                     max_prompt_rows=chunks.max_prompt_rows, max_batch_rows=chunks.max_batch_rows, rows=chunks.rows)
    return candidates_of(out, _name(instance, corpus, corpus_fraction, corpus_count, margin))


def picks_table(rows: pa.Table, a: np.ndarray, b: np.ndarray, m: np.ndarray, keys: np.ndarray) -> pa.Table:
    """Heap items of chosen pairs (row indices ``a``, ``b`` into canonical ``rows``)."""
    cid = rows.column("completion_id")
    return pa.table({
        "_value": pa.array(m, pa.float64()), "_key": pa.array(keys, pa.uint64()),
        "prompt_id": rows.column("prompt_id").take(pa.array(a, pa.int64())),
        "a_id": cid.take(pa.array(a, pa.int64())), "b_id": cid.take(pa.array(b, pa.int64())),
    })


def candidates_of(top: pa.Table | None, name: str) -> pa.Table:
    """CANDIDATES rows of heap items, in canonical ``(prompt_id, a_id, b_id)`` order."""
    if top is None:
        empty = pa.array([], pa.string())
        return base.candidates(empty, empty, empty, np.zeros(0), name)
    top = top.take(pc.sort_indices(top, sort_keys=[("prompt_id", "ascending"), ("a_id", "ascending"), ("b_id", "ascending")]))
    return base.candidates(top.column("prompt_id"), top.column("a_id"), top.column("b_id"), top.column("_value").to_numpy(), name)

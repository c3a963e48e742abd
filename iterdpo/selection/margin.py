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
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from iterdpo.selection import base

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
    r = base.float_column(rows, col, where)
    groups = base.group_codes(rows.column("prompt_id"))
    a, b = base.within_group_pairs(groups)
    texts = base.text_codes(rows.column("completion"))
    distinct = texts[a] != texts[b]
    a, b = a[distinct], b[distinct]
    return rows, a, b, np.abs(r[a] - r[b]), groups[a]


def select_margin(
    scored: base.Source,
    *,
    instance: str = "smallest",
    corpus: str = "smallest",
    corpus_fraction: float = 0.5,
    corpus_count: int | None = None,
    margin: str = "sum",
    seed: int = 0,
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

    Returns one row per kept pair, ``a_id < b_id``, sorted by ``(prompt_id, a_id)``.
    """
    if instance not in base.ORDERS or corpus not in base.ORDERS:
        raise ValueError(f"instance and corpus must be one of {base.ORDERS}")
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
    name = f"margin:{instance}/{corpus}@{corpus_count if corpus_count is not None else corpus_fraction}/{margin}"
    pid = rows.column("prompt_id")
    return base.candidates(pid.take(a[chosen]), cid.take(a[chosen]), cid.take(b[chosen]), m[chosen], name)

"""SeRA: self-reviewing and alignment (Ko et al., 2024; seed 003).

Iteration 1 trains on the whole offline preference set ``D`` (no aligned model exists,
every implicit reward margin (IRM) is 0): :func:`select_sera` returns all of it.
From iteration t >= 2 (reference = pi_{t-1}) the training set ``D_t`` has two sources:

1. **Off-policy selection** (:func:`select_offline`): every offline pair gets the
   *oriented* IRM ``m = R(x, y_w) - R(x, y_l)`` (chosen minus rejected; negative means
   the model disagrees with the label: likely noise); keep the top ``k1`` by ``m``
   (default ``k1 = 0.7 |D|``).
2. **Preference bootstrapping** (:func:`select_bootstrap`): for prompts of ``D``, N
   samples of pi_{t-1} (paper: N=4, T=0.7, top-p 0.95) are scored; chosen = argmax R,
   rejected = argmin R (among responses whose text differs from the chosen one); keep
   the top ``k2`` prompts by ``R(chosen) - R(rejected)`` (default ``k2 = 0.3 |D|``;
   "best-SeRA" raises it up to ``|D|``).

**Ensemble** across iterations, for both sources::

    R_t(x, y) = (1 - lambda) * r_{t-1}(x, y) + lambda * r_{t-2}(x, y)

where ``r_{t-1} = beta (log pi_{t-1} - log ref_{t-1})`` is the scored ``reward`` column
and ``r_{t-2}`` the same under the model before it, read from the ``prev_reward`` column
(written by the scoring stage when asked for an ensemble). ``lambda = 0`` while only one
aligned model exists (iteration 2), and whenever ``lambda`` is 0 the ``prev_reward``
column is not needed. The paper finds lambda in 0.1-0.5 best. For SimPO the implicit
reward is ``r_simpo = beta logp / |y|``: pass ``loss="simpo"`` (columns ``reward_simpo``
and ``prev_reward``, which scoring fills with pi_{t-2}'s r_simpo in reference-free runs).

Inputs (columns):

- offline pairs: ``prompt_id, chosen_id, rejected_id`` (a PREFERENCES table has them);
  either with the rewards on the pair (``chosen_reward, rejected_reward`` and, for the
  ensemble, ``prev_chosen_reward, prev_rejected_reward``) or looked up by id in a SCORED
  table of the offline responses (``completion_id, reward[, prev_reward]``).
- samples: SCORED rows of pi_{t-1}'s samples (``prompt_id, completion_id, completion,
  reward[, prev_reward]``).

Output (:data:`SERA_PAIRS`): ``prompt_id, chosen_id, rejected_id, margin`` (signed
ensemble IRM), ``source`` (``offline`` | ``bootstrap``), ``selector``. Offline pairs keep
their labels (``label_source = offline``); bootstrapped pairs are self-labelled
(``label_source = implicit``).

Streaming: given a Parquet path or record-batch reader, :func:`select_offline` reads the
offline pairs batch by batch into a heap of the top ``k1`` (``|D|`` comes from the
Parquet footer), and :func:`select_bootstrap` reads the samples prompt by prompt into a
heap of the top ``k2`` (:mod:`iterdpo.selection.stream`). Looking rewards up by id in a
separate SCORED table of the offline responses keeps that ``(id, reward)`` map in memory.
Iteration 1 returns the whole of ``D`` (sorted), which is in memory by nature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iterdpo import records
from iterdpo.selection import base, stream

SERA_PAIRS = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("chosen_id", pa.string()),
        ("rejected_id", pa.string()),
        ("margin", pa.float64()),  # R(chosen) - R(rejected), the ensemble IRM (0 at iteration 1)
        ("source", pa.string()),  # offline | bootstrap
        ("selector", pa.string()),
    ]
)


def reward_columns(loss: str = "dpo") -> tuple[str, str]:
    """(current, previous) reward columns of a loss: SimPO has no reference model.

    Scoring writes ``prev_reward`` as r_simpo of pi_{t-2} when the run has no reference
    (SimPO), so only the current column differs between the losses."""
    return ("reward_simpo", "prev_reward") if loss == "simpo" else ("reward", "prev_reward")


def ensemble(current: np.ndarray, previous: np.ndarray | None, lam: float) -> np.ndarray:
    """``(1 - lam) * current + lam * previous``; ``previous=None`` means lambda = 0."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"SeRA ensemble lambda must be in [0, 1], got {lam}")
    current = np.asarray(current, dtype=np.float64)
    if previous is None or lam == 0.0:
        return current
    return (1.0 - lam) * current + lam * np.asarray(previous, dtype=np.float64)


def effective_lambda(lam: float, iteration: int | None) -> float:
    """The paper's rule: lambda = 0 while only one aligned model exists (t <= 2)."""
    return 0.0 if iteration is not None and iteration <= 2 else lam


def _table(prompt_ids, chosen, rejected, margins, source: str, selector: str) -> pa.Table:
    n = len(margins)
    return pa.table(
        {
            "prompt_id": pa.array(prompt_ids, pa.string()),
            "chosen_id": pa.array(chosen, pa.string()),
            "rejected_id": pa.array(rejected, pa.string()),
            "margin": pa.array(np.asarray(margins, np.float64), pa.float64()),
            "source": pa.repeat(pa.scalar(source, pa.string()), n),
            "selector": pa.repeat(pa.scalar(selector, pa.string()), n),
        },
        schema=SERA_PAIRS,
    )


def _offline_rewards(pairs: pa.Table, scored: base.Source | None, cur: str, prev: str, lam: float, where: str, offset: int = 0,
                     lookup: tuple[pa.Table, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble rewards of each pair's chosen and rejected response (``offset``: source row
    of the first pair, for errors; ``lookup``: :func:`_lookup_table` of ``scored``, reused)."""
    if scored is None:
        need = [f"chosen_{cur}", f"rejected_{cur}"] + ([f"prev_chosen_{cur}", f"prev_rejected_{cur}"] if lam else [])
        base.require_columns(pairs.column_names, need, where)
        rc, rr = (base.float_column(pairs, c, where, offset) for c in need[:2])
        pc_, pr_ = (base.float_column(pairs, c, where, offset) for c in need[2:]) if lam else (None, None)
        return ensemble(rc, pc_, lam), ensemble(rr, pr_, lam)
    sc, r = lookup if lookup is not None else _lookup_table(scored, cur, prev, lam)
    out = []
    for side in ("chosen_id", "rejected_id"):
        idx = pc.index_in(pairs.column(side), value_set=sc.column("completion_id").combine_chunks())
        missing = np.flatnonzero(np.asarray(pc.is_null(idx).to_numpy(zero_copy_only=False)))
        if missing.size:
            i = int(missing[0])
            raise records.RecordError(f"{where}: row {offset + i}, field {side!r}: {pairs.column(side)[i].as_py()!r} is not in the scored offline responses")
        out.append(r[np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)])
    return out[0], out[1]


def _lookup_table(scored: base.Source, cur: str, prev: str, lam: float) -> tuple[pa.Table, np.ndarray]:
    """``(completion_id column, ensemble reward)`` of the scored offline responses."""
    sc = base.read_columns(scored, ["completion_id", cur] + ([prev] if lam else []), "scored offline responses")
    r = ensemble(base.float_column(sc, cur, "scored offline responses"), base.float_column(sc, prev, "scored offline responses") if lam else None, lam)
    return sc, r


def select_offline(
    pairs: base.Source,
    scored: base.Source | None = None,
    *,
    k1: int | None = None,
    k1_fraction: float = 0.7,
    lam: float = 0.0,
    loss: str = "dpo",
    seed: int = 0,
    batch_size: int = stream.BATCH,
) -> pa.Table:
    """Off-policy selection: the ``k1`` offline pairs with the largest oriented ensemble IRM.

    ``k1`` defaults to ``ceil(k1_fraction * |D|)``. Returns SERA_PAIRS rows, source
    ``offline``, sorted by ``(prompt_id, chosen_id, rejected_id)``. A path or reader is
    streamed (``batch_size`` rows a batch).
    """
    if not isinstance(pairs, pa.Table):
        return _stream_offline(pairs, scored, k1=k1, k1_fraction=k1_fraction, lam=lam, loss=loss, seed=seed, batch_size=batch_size)
    cur, prev = reward_columns(loss)
    optional = tuple(f"{p}{s}_{cur}" for p in ("", "prev_") for s in ("chosen", "rejected"))
    table = base.read_columns(pairs, ["prompt_id", "chosen_id", "rejected_id"], "offline pairs", optional=optional)
    table = base.canonical(table, ["prompt_id", "chosen_id", "rejected_id"])
    rc, rr = _offline_rewards(table, scored, cur, prev, lam, "offline pairs")
    m = rc - rr
    h_c, h_r = base.id_hashes(table.column("chosen_id")), base.id_hashes(table.column("rejected_id"))
    keep = base.top_count(len(m), k1_fraction, k1)
    chosen = np.sort(base.rank(m, base.pair_keys(h_c, h_r, seed), "largest")[:keep])
    name = f"sera:offline@{k1 if k1 is not None else k1_fraction}/lambda={lam}/{cur}"
    return _table(table.column("prompt_id").take(chosen), table.column("chosen_id").take(chosen), table.column("rejected_id").take(chosen), m[chosen], "offline", name)


def bootstrap_pairs(groups: np.ndarray, rewards: np.ndarray, texts: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group (sorted ascending): argmax and argmin of ``rewards`` as row indices.

    The argmin is taken among rows whose text differs from the argmax's; ties go to the
    smaller seeded key. Groups with a single distinct text give no pair.
    """
    best = base.first_per_group(groups, base.rank(rewards, keys, "largest"))
    best_of_group = np.full(int(groups.max()) + 1 if len(groups) else 0, -1, dtype=np.int64)
    best_of_group[groups[best]] = best
    other = texts != texts[best_of_group[groups]]
    rows = np.flatnonzero(other)
    worst = rows[base.first_per_group(groups[rows], base.rank(rewards[rows], keys[rows], "smallest"))]
    return best_of_group[groups[worst]], worst


def select_bootstrap(
    samples: base.Source,
    *,
    k2: int | None = None,
    k2_fraction: float | None = None,
    lam: float = 0.0,
    loss: str = "dpo",
    seed: int = 0,
    batch_size: int = stream.BATCH,
) -> pa.Table:
    """Preference bootstrapping: per prompt (argmax R, argmin R); keep the top ``k2`` prompts.

    ``k2`` is a count; or give ``k2_fraction`` of the prompts with a pair; neither keeps all.
    Returns SERA_PAIRS rows, source ``bootstrap``, margin ``R(chosen) - R(rejected) >= 0``.
    A path or reader is streamed prompt by prompt (``batch_size`` rows a batch).
    """
    if not isinstance(samples, pa.Table):
        return _stream_bootstrap(samples, k2=k2, k2_fraction=k2_fraction, lam=lam, loss=loss, seed=seed, batch_size=batch_size)
    cur, prev = reward_columns(loss)
    cols = ["prompt_id", "completion_id", "completion", cur] + ([prev] if lam else [])
    rows = base.canonical(base.read_columns(samples, cols, "samples"), ["prompt_id", "completion_id"])
    base.check_unique(rows, "completion_id", "samples")
    r = ensemble(base.float_column(rows, cur, "samples"), base.float_column(rows, prev, "samples") if lam else None, lam)
    groups = base.group_codes(rows.column("prompt_id"))
    keys = base.row_keys(base.id_hashes(rows.column("completion_id")), seed)
    w, l_ = bootstrap_pairs(groups, r, base.text_codes(rows.column("completion")), keys)
    m = r[w] - r[l_]
    keep = base.top_count(len(m), 1.0 if k2_fraction is None else k2_fraction, k2)
    pick = np.sort(base.rank(m, base.pair_keys(keys[w], keys[l_], seed), "largest")[:keep])
    w, l_ = w[pick], l_[pick]
    cid = rows.column("completion_id")
    name = f"sera:bootstrap@{k2 if k2 is not None else k2_fraction}/lambda={lam}/{cur}"
    return _table(rows.column("prompt_id").take(w), cid.take(w), cid.take(l_), m[pick], "bootstrap", name)


def select_sera(
    iteration: int,
    pairs: base.Source,
    offline_scored: base.Source | None = None,
    samples: base.Source | None = None,
    *,
    k1_fraction: float = 0.7,
    k2_fraction: float = 0.3,
    lam: float = 0.0,
    loss: str = "dpo",
    seed: int = 0,
) -> pa.Table:
    """``D_t`` of SeRA iteration ``iteration`` (1-based): offline selection + bootstrapping.

    Iteration 1: all offline pairs (margin 0). Iteration t >= 2: the top
    ``k1 = ceil(k1_fraction |D|)`` offline pairs and the top ``k2 = ceil(k2_fraction |D|)``
    bootstrapped pairs, with ``lambda`` forced to 0 at t = 2.
    """
    if iteration < 1:
        raise ValueError(f"iteration is 1-based, got {iteration}")
    cur = reward_columns(loss)[0]
    optional = tuple(f"{p}{s}_{cur}" for p in ("", "prev_") for s in ("chosen", "rejected"))
    if iteration >= 2 and isinstance(pairs, (str, Path)):  # stream D: |D| from the Parquet footer
        lam = effective_lambda(lam, iteration)
        size = stream.open_stream(pairs, ["prompt_id", "chosen_id", "rejected_id"], "offline pairs").num_rows
        parts = [select_offline(pairs, offline_scored, k1=int(np.ceil(k1_fraction * size)), lam=lam, loss=loss, seed=seed)]
        if samples is not None:
            parts.append(select_bootstrap(samples, k2=int(np.ceil(k2_fraction * size)), lam=lam, loss=loss, seed=seed))
        return pa.concat_tables(parts)
    table = base.read_columns(pairs, ["prompt_id", "chosen_id", "rejected_id"], "offline pairs", optional=optional)
    if iteration == 1:
        t = base.canonical(table, ["prompt_id", "chosen_id", "rejected_id"])
        return _table(t.column("prompt_id"), t.column("chosen_id"), t.column("rejected_id"), np.zeros(t.num_rows), "offline", "sera:iteration1/all-offline")
    lam = effective_lambda(lam, iteration)
    size = table.num_rows
    parts = [select_offline(table, offline_scored, k1=int(np.ceil(k1_fraction * size)), lam=lam, loss=loss, seed=seed)]
    if samples is not None:
        parts.append(select_bootstrap(samples, k2=int(np.ceil(k2_fraction * size)), lam=lam, loss=loss, seed=seed))
    return pa.concat_tables(parts)


def _stream_offline(pairs: base.Source, scored: base.Source | None, *, k1: int | None, k1_fraction: float, lam: float, loss: str, seed: int, batch_size: int) -> pa.Table:
    """:func:`select_offline` over a stream of pairs: a heap of the top ``k1`` by oriented IRM."""
    cur, prev = reward_columns(loss)
    ensemble(np.zeros(0), None, lam)  # validate lambda before reading
    optional = tuple(f"{p}{s}_{cur}" for p in ("", "prev_") for s in ("chosen", "rejected"))
    st = stream.open_stream(pairs, ["prompt_id", "chosen_id", "rejected_id"], "offline pairs", optional=optional, batch_size=batch_size)
    cap = k1 if k1 is not None else (base.top_count(st.num_rows, k1_fraction, None) if st.num_rows is not None else None)
    lookup = _lookup_table(scored, cur, prev, lam) if scored is not None else None
    top = stream.TopK("largest", cap, ["prompt_id", "chosen_id", "rejected_id"])
    offset = 0
    for batch in st.batches:
        t = pa.Table.from_batches([batch])
        rc, rr = _offline_rewards(t, scored, cur, prev, lam, st.where, offset=offset, lookup=lookup)
        offset += t.num_rows
        keys = base.pair_keys(base.id_hashes(t.column("chosen_id")), base.id_hashes(t.column("rejected_id")), seed)
        top.push(pa.table({"_value": pa.array(rc - rr, pa.float64()), "_key": pa.array(keys, pa.uint64()),
                           "prompt_id": t.column("prompt_id"), "chosen_id": t.column("chosen_id"), "rejected_id": t.column("rejected_id")}))
    keep = base.top_count(top.pushed, k1_fraction, k1)
    name = f"sera:offline@{k1 if k1 is not None else k1_fraction}/lambda={lam}/{cur}"
    return _from_top(top.top(keep), "offline", name)


def _stream_bootstrap(samples: base.Source, *, k2: int | None, k2_fraction: float | None, lam: float, loss: str, seed: int, batch_size: int) -> pa.Table:
    """:func:`select_bootstrap` over a stream: per chunk of whole prompts the (argmax, argmin)
    pair, into a heap of the top ``k2`` margins."""
    cur, prev = reward_columns(loss)
    ensemble(np.zeros(0), None, lam)
    frac = 1.0 if k2_fraction is None else k2_fraction
    base.top_count(0, frac, k2)  # validate before reading
    cols = ["prompt_id", "completion_id", "completion", cur] + ([prev] if lam else [])
    cap = stream.fraction_cap(samples, frac, k2, "samples", batch_size)
    st = stream.open_stream(samples, cols, "samples", batch_size=batch_size)
    top = stream.TopK("largest", cap, ["prompt_id"])
    hashes = []
    for chunk, start in stream.PromptChunks(st):
        r_raw = ensemble(base.float_column(chunk, cur, st.where, start), base.float_column(chunk, prev, st.where, start) if lam else None, lam)
        h_raw = base.id_hashes(chunk.column("completion_id"))
        hashes.append(h_raw)
        order = np.asarray(pc.sort_indices(chunk, sort_keys=[("prompt_id", "ascending"), ("completion_id", "ascending")]).to_numpy(), np.int64)
        rows = chunk.take(pa.array(order))
        r, keys = r_raw[order], base.row_keys(h_raw[order], seed)
        groups = base.group_codes(rows.column("prompt_id"))
        w, l_ = bootstrap_pairs(groups, r, base.text_codes(rows.column("completion")), keys)
        cid = rows.column("completion_id")
        top.push(pa.table({"_value": pa.array(r[w] - r[l_], pa.float64()), "_key": pa.array(base.pair_keys(keys[w], keys[l_], seed), pa.uint64()),
                           "prompt_id": rows.column("prompt_id").take(pa.array(w, pa.int64())),
                           "chosen_id": cid.take(pa.array(w, pa.int64())), "rejected_id": cid.take(pa.array(l_, pa.int64()))}))
    stream.check_unique_hashes(hashes, samples, "completion_id", st.where)
    keep = base.top_count(top.pushed, frac, k2)
    name = f"sera:bootstrap@{k2 if k2 is not None else k2_fraction}/lambda={lam}/{cur}"
    return _from_top(top.top(keep), "bootstrap", name)


def _from_top(top: pa.Table | None, source: str, name: str) -> pa.Table:
    """SERA_PAIRS rows of heap items, sorted by ``(prompt_id, chosen_id, rejected_id)``."""
    if top is None:
        e = pa.array([], pa.string())
        return _table(e, e, e, np.zeros(0), source, name)
    top = top.take(pc.sort_indices(top, sort_keys=[("prompt_id", "ascending"), ("chosen_id", "ascending"), ("rejected_id", "ascending")]))
    return _table(top.column("prompt_id"), top.column("chosen_id"), top.column("rejected_id"), top.column("_value").to_numpy(), source, name)

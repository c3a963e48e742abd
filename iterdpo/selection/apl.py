"""Active preference learning (Muldrew et al., 2024; seed 002).

Acquisition step: draw S prompts, generate completions with the current policy, score,
keep the top M pairs, get oracle labels, fine-tune. Scores:

- ``entropy`` (per prompt): the Monte-Carlo predictive entropy
  ``H(x) = -(1/n) sum_{k=1..n} logp_pi(y^k|x)``, ``y^k ~ pi`` at T=1 (paper: n=8),
  with per-sequence sums (default) or per-token means (``per_token=True``:
  ``logp / |y|``). Keep the **highest**.
- ``certainty`` (per pair): ``|r(x,y1) - r(x,y2)|`` with the implicit reward
  ``r = beta (logp_pi - logp_ref)``. Keep the **largest**.
- ``hybrid``: draw ``J*S`` prompts, keep ``S`` by entropy, generate pairs for them, keep
  ``M`` by certainty (:func:`select_hybrid`; the generation in between is the caller's).

At the first acquisition the policy equals its reference and every margin is 0: the
certainty order is then a seeded random order (ties by :func:`base.pair_keys`), never
input order.

**Known bug in the authors' public code** (not copied): with the samples of prompt s at
flat positions ``s*n .. (s+1)*n - 1`` it averaged ``all_hs[s:s+n]`` (a window that
overlaps the next prompts) instead of ``all_hs[s*n:(s+1)*n]``, which made its entropy
runs close to random. :func:`prompt_entropy` slices per prompt block, and the
table-level :func:`entropy_by_prompt` groups by ``prompt_id`` so no slicing is involved;
tests/selection/test_apl.py checks both against the buggy slicing.

Given a Parquet path or record-batch reader, :func:`select_entropy` and
:func:`select_certainty` stream it (:mod:`iterdpo.selection.stream`): per chunk of whole
prompts they compute the prompt's score and keep a heap of the best ``count``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iterdpo.selection import base, stream

PROMPT_SCORES = pa.schema([("prompt_id", pa.string()), ("score", pa.float64()), ("selector", pa.string())])


def prompt_entropy(logps: np.ndarray, n: int) -> np.ndarray:
    """``H[s] = -mean(logps[s*n:(s+1)*n])`` for flat samples laid out prompt by prompt.

    Args:
        logps: ``[S*n]`` sequence log-probs, the n samples of prompt s contiguous.
        n: samples per prompt.

    Returns ``[S]`` entropies.
    """
    logps = np.asarray(logps, dtype=np.float64)
    if n < 1 or logps.size % n:
        raise ValueError(f"{logps.size} log-probs do not split into blocks of n={n}")
    return -logps.reshape(-1, n).mean(axis=1)  # row s = logps[s*n:(s+1)*n]


def entropy_by_prompt(scored: base.Source, *, per_token: bool = False) -> tuple[pa.Array, np.ndarray]:
    """(prompt_ids ascending, H) from SCORED rows of n samples per prompt (any n, any order).

    ``H(x) = -(1/n_x) sum_k logp_pi(y^k|x)`` (``per_token``: ``logp / |y|`` per sample).
    """
    cols = ["prompt_id", "completion_id", "policy_logp"] + (["num_tokens"] if per_token else [])
    rows = base.canonical(base.read_columns(scored, cols, "scored"), ["prompt_id", "completion_id"])
    lp = base.float_column(rows, "policy_logp", "scored")
    if per_token:
        lp = lp / np.maximum(base.float_column(rows, "num_tokens", "scored"), 1.0)
    g = base.group_codes(rows.column("prompt_id"))
    if len(g) == 0:
        return pa.array([], pa.string()), np.zeros(0)
    sums = np.bincount(g, weights=lp)
    counts = np.bincount(g)
    starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    return rows.column("prompt_id").combine_chunks().take(pa.array(starts)), -sums / counts


def draw_prompts(prompts: base.Source, count: int, *, seed: int = 0) -> pa.Table:
    """A seeded uniform draw of ``count`` prompts (PROMPTS rows), independent of row order."""
    table = base.canonical(base.read_columns(prompts, ["prompt_id"], "prompts", optional=("prompt", "source")), ["prompt_id"])
    keys = base.row_keys(base.id_hashes(table.column("prompt_id")), seed)
    pos = base.rank(np.zeros(len(keys)), keys, "random")[: min(count, len(keys))]
    return table.take(pa.array(np.sort(pos)))


def select_entropy(scored: base.Source, *, count: int, per_token: bool = False, seed: int = 0, batch_size: int = stream.BATCH) -> pa.Table:
    """The ``count`` prompts with the highest predictive entropy -> PROMPT_SCORES rows."""
    if not isinstance(scored, pa.Table):
        return _stream_entropy(scored, count=count, per_token=per_token, seed=seed, batch_size=batch_size)
    pids, h = entropy_by_prompt(scored, per_token=per_token)
    keys = base.row_keys(base.id_hashes(pids), seed)
    pick = np.sort(base.rank(h, keys, "largest")[: min(count, len(h))])
    n = len(pick)
    return pa.table(
        {"prompt_id": pids.take(pa.array(pick, pa.int64())), "score": pa.array(h[pick], pa.float64()),
         "selector": pa.repeat(pa.scalar(f"apl:entropy/{'token' if per_token else 'sequence'}", pa.string()), n)},
        schema=PROMPT_SCORES,
    )


def select_certainty(scored: base.Source, *, count: int, margin: str = "sum", seed: int = 0, prompts: pa.Array | None = None, batch_size: int = stream.BATCH) -> pa.Table:
    """The ``count`` pairs with the largest ``|r(y1) - r(y2)|`` -> CANDIDATES rows.

    One pair per prompt: its first two distinct responses in ``completion_id`` order (the
    paper samples exactly two). ``prompts`` restricts to these prompt ids (hybrid).
    """
    from iterdpo.selection.margin import margin_pairs

    if not isinstance(scored, pa.Table):
        return _stream_certainty(scored, count=count, margin=margin, seed=seed, prompts=prompts, batch_size=batch_size)
    rows, a, b, m, g = margin_pairs(scored, margin=margin)
    if prompts is not None:
        import pyarrow.compute as pc

        inside = np.asarray(pc.is_in(rows.column("prompt_id"), value_set=pa.array(prompts, pa.string())).to_numpy(zero_copy_only=False), bool)
        ok = inside[a]
        a, b, m, g = a[ok], b[ok], m[ok], g[ok]
    first = base.first_per_group(g, np.arange(len(a)))  # pairs are sorted by (group, a, b)
    cid = rows.column("completion_id")
    h = base.id_hashes(cid)
    keys = base.pair_keys(h[a[first]], h[b[first]], seed)
    pick = np.sort(first[base.rank(m[first], keys, "largest")[: min(count, len(first))]])
    return base.candidates(rows.column("prompt_id").take(a[pick]), cid.take(a[pick]), cid.take(b[pick]), m[pick], f"apl:certainty/{margin}")


def select_hybrid(entropy_scored: base.Source, pair_scored: base.Source, *, s: int, m: int, per_token: bool = False, margin: str = "sum", seed: int = 0) -> pa.Table:
    """Hybrid: top ``s`` prompts by entropy (of ``entropy_scored``, n samples for each of the
    J*S drawn prompts), then the top ``m`` of their pairs (``pair_scored``) by certainty."""
    top = select_entropy(entropy_scored, count=s, per_token=per_token, seed=seed)
    out = select_certainty(pair_scored, count=m, margin=margin, seed=seed, prompts=top.column("prompt_id"))
    name = f"apl:hybrid/s={s}/m={m}"
    return out.set_column(out.schema.get_field_index("selector"), "selector", pa.repeat(pa.scalar(name, pa.string()), out.num_rows))


def _stream_entropy(scored: base.Source, *, count: int, per_token: bool, seed: int, batch_size: int) -> pa.Table:
    """:func:`select_entropy` over a stream: per chunk of whole prompts, H per prompt into a
    heap of the ``count`` highest (sums in canonical order, as in memory)."""
    cols = ["prompt_id", "completion_id", "policy_logp"] + (["num_tokens"] if per_token else [])
    st = stream.open_stream(scored, cols, "scored", batch_size=batch_size)
    top = stream.TopK("largest", max(count, 0), ["prompt_id"])
    for chunk, start in stream.PromptChunks(st):
        lp = base.float_column(chunk, "policy_logp", st.where, offset=start)
        if per_token:
            lp = lp / np.maximum(base.float_column(chunk, "num_tokens", st.where, offset=start), 1.0)
        order = np.asarray(pc.sort_indices(chunk, sort_keys=[("prompt_id", "ascending"), ("completion_id", "ascending")]).to_numpy(), np.int64)
        pid = chunk.column("prompt_id").combine_chunks().take(pa.array(order))
        lp = lp[order]
        g = base.group_codes(pid)
        starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
        pids = pid.take(pa.array(starts))
        h = -np.bincount(g, weights=lp) / np.bincount(g)
        top.push(pa.table({"_value": pa.array(h, pa.float64()), "_key": pa.array(base.row_keys(base.id_hashes(pids), seed), pa.uint64()), "prompt_id": pids}))
    out = top.top(min(count, top.pushed))
    name = f"apl:entropy/{'token' if per_token else 'sequence'}"
    if out is None:
        return pa.table({"prompt_id": pa.array([], pa.string()), "score": pa.array([], pa.float64()), "selector": pa.array([], pa.string())}, schema=PROMPT_SCORES)
    out = out.take(pc.sort_indices(out, sort_keys=[("prompt_id", "ascending")]))
    return pa.table({"prompt_id": out.column("prompt_id"), "score": out.column("_value"),
                     "selector": pa.repeat(pa.scalar(name, pa.string()), out.num_rows)}, schema=PROMPT_SCORES)


def _stream_certainty(scored: base.Source, *, count: int, margin: str, seed: int, prompts, batch_size: int) -> pa.Table:
    """:func:`select_certainty` over a stream: each prompt's first distinct pair into a heap
    of the ``count`` largest margins."""
    from iterdpo.selection.margin import MARGIN_COLUMNS, candidates_of, chunk_pairs, picks_table

    if margin not in MARGIN_COLUMNS:
        raise ValueError(f"margin must be one of {sorted(MARGIN_COLUMNS)}, got {margin!r}")
    col = MARGIN_COLUMNS[margin]
    st = stream.open_stream(scored, ["prompt_id", "completion_id", "completion", col], "scored", batch_size=batch_size)
    allowed = None if prompts is None else pa.array(prompts, pa.string())
    top = stream.TopK("largest", max(count, 0), ["prompt_id"])
    hashes = []
    for chunk, start in stream.PromptChunks(st):
        rows, h, h_raw, a, b, m, g = chunk_pairs(chunk, col, st.where, start)
        hashes.append(h_raw)
        if allowed is not None:
            inside = np.asarray(pc.is_in(rows.column("prompt_id"), value_set=allowed).to_numpy(zero_copy_only=False), bool)
            ok = inside[a]
            a, b, m, g = a[ok], b[ok], m[ok], g[ok]
        first = base.first_per_group(g, np.arange(len(a)))  # pairs are sorted by (group, a, b)
        top.push(picks_table(rows, a[first], b[first], m[first], base.pair_keys(h[a[first]], h[b[first]], seed)))
    stream.check_unique_hashes(hashes, scored, "completion_id", st.where)
    return candidates_of(top.top(min(count, top.pushed)), f"apl:certainty/{margin}")

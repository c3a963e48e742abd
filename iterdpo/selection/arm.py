"""Active reward modelling: which pairs to annotate next (Shen, Sun, Ton, 2025; seed 000).

A Bradley-Terry reward model (:mod:`iterdpo.selection.arm_model`) scores a response as
``r = w . phi(e)``. For a candidate pair i = (a, b) let ``d_i = phi(a) - phi(b)`` and
``p_i = sigmoid(w . d_i)``; ``lambda_i = p_i (1 - p_i)`` is its Fisher weight. Strategies
(:data:`STRATEGIES`, each picks ``c`` of the ``n`` candidates):

============  ==================================================================
``dopt``      maximise ``log det(sum_{i in C} lambda_i d_i d_i^T + I / sigma^2)``
``pa_dopt``   same, past labelled pairs' Fisher information (current model) added
``xtx``       same without the ``lambda_i`` weight (design matrix ``X^T X``)
``entropy``   ``p`` closest to 0.5: smallest ``|r_a - r_b|``
``maxdiff``   largest ``|r_a - r_b|``
``coreset``   sensitivity sampling for logistic regression (Huggins et al., 2016)
``batchbald`` BatchBALD (Kirsch et al., 2019) over a Laplace last layer
``random``    uniform (seeded keys)
============  ==================================================================

The log-det strategies come in two solvers (``solver=``):

- ``topc`` (the paper): score every candidate by the gradient of the criterion at "all
  included", the leverage ``lambda_i d_i^T M^-1 d_i`` with
  ``M = sum_all lambda_j d_j d_j^T + I/sigma^2`` (+ past), and take the top c.
- ``greedy`` (default): start from ``M = I/sigma^2`` (+ past) and repeatedly add the
  candidate with the largest gain ``log(1 + lambda_i d_i^T M^-1 d_i)``, updating ``M^-1``
  and every candidate's quadratic form by Sherman-Morrison (rank one, ``O(n H)`` a step):
  it does not pick near-duplicates. Greedy is not guaranteed to beat top-c (it lost on
  0.4% of random small instances), so this solver returns whichever of the two designs
  has the larger log-det (:func:`greedy_or_topc`).

``I/sigma^2`` is the Gaussian prior on ``w``: with fewer pairs than features ``M`` would
be singular without it.

Candidate pools (:func:`candidate_pool`): ``in_prompt`` (all pairs among one prompt's
responses) or ``cross_prompt`` (uniform random pairs among all responses of the drawn
prompts; the paper: 500 prompts x 10 responses, 20,000 pairs).

BatchBALD: implemented here rather than with the ``batchbald_redux`` package, whose
install requires torchvision (which this project's pinned CPU torch stack must not pull
in) and which expects MC-dropout models. Our Bayesian part is a Laplace approximation
of the last layer: ``w ~ N(w_hat, (sum_labelled lambda d d^T + I/sigma^2)^-1)``, K
samples; the joint entropy of the batch's labels is exact while ``2^|batch|`` <= the
configuration budget, then estimated with sampled configurations (importance weighted,
as in batchbald_redux).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iterdpo import records
from iterdpo.selection import base

# --- helpers ---------------------------------------------------------------------------


def one_blas_thread():
    """Context: numpy's BLAS on one thread. The greedy loops are many small products, where
    OpenBLAS threads spin-wait; on two busy cores one thread was 5x faster (greedy D-opt,
    100k x 128, choose 1,000: 5.7 s vs 27.9 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def fisher_weights(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``lambda_i = p_i (1 - p_i)``, ``p_i = sigmoid(w . d_i)``."""
    p = sigmoid(d @ w)
    return p * (1.0 - p)


def prior_matrix(dim: int, sigma: float, past: np.ndarray | None = None, past_weights: np.ndarray | None = None) -> np.ndarray:
    """``I/sigma^2 + sum_past lambda_j d_j d_j^T`` ([H, H])."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    m = np.eye(dim) / sigma**2
    if past is not None and len(past):
        pw = np.ones(len(past)) if past_weights is None else past_weights
        m = m + past.T @ (pw[:, None] * past)
    return m


def log_det(d: np.ndarray, weights: np.ndarray, chosen: np.ndarray, prior: np.ndarray) -> float:
    """``log det(sum_{i in chosen} weights_i d_i d_i^T + prior)``."""
    dc = d[chosen]
    sign, val = np.linalg.slogdet(prior + dc.T @ (weights[chosen][:, None] * dc))
    return float(val) if sign > 0 else -math.inf


def _argmax(values: np.ndarray, keys: np.ndarray) -> int:
    """Index of the largest value; ties go to the smallest key, then the smallest index."""
    best = values.max()
    tied = np.flatnonzero(values == best)
    return int(tied[0]) if len(tied) == 1 else int(tied[np.lexsort((tied, keys[tied]))[0]])


# --- log-det designs -------------------------------------------------------------------


def leverage_topc(d: np.ndarray, weights: np.ndarray, c: int, prior: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Top c by ``weights_i d_i^T M^-1 d_i``, ``M = sum_all weights d d^T + prior`` (the paper)."""
    m = prior + d.T @ (weights[:, None] * d)
    lev = weights * np.einsum("ij,ij->i", d @ np.linalg.inv(m), d)
    return base.rank(lev, keys, "largest")[:c]


def greedy_logdet(d: np.ndarray, weights: np.ndarray, c: int, prior: np.ndarray, keys: np.ndarray, *, block: int = 256) -> np.ndarray:
    """Greedy maximisation of ``log det(prior + sum_C weights d d^T)`` with rank-one updates.

    Keeps ``A = M^-1``; adding j (gain ``log(1 + q_j)``, ``q_j = weights_j d_j^T A d_j``)
    updates it by Sherman-Morrison, ``O(H^2)``::

        A <- A - weights_j (A d_j)(A d_j)^T / (1 + q_j)

    Every ``q_i`` can only shrink as ``M`` grows (submodularity), so stale values are
    upper bounds ("lazy greedy", Minoux 1978). Each pick re-evaluates exactly only the
    ``block`` candidates with the largest bounds (one ``[B, H] x [H, H]`` product) and
    accepts the best if it beats every other bound; otherwise the block grows (up to a
    full sweep). Same picks as plain greedy (ties: smaller key, then index), at
    ``O(n + B H^2)`` per pick instead of ``O(n H)``.
    """
    with one_blas_thread():
        return _greedy(d, weights, c, prior, keys, block)


def _greedy(d: np.ndarray, weights: np.ndarray, c: int, prior: np.ndarray, keys: np.ndarray, block: int) -> np.ndarray:
    n = len(d)
    c = min(c, n)
    a = np.linalg.inv(prior)
    bound = weights * np.einsum("ij,ij->i", d @ a, d)  # exact at the start
    picked = np.empty(c, dtype=np.int64)
    for t in range(c):
        size = min(block, n - t)
        while True:
            if size >= n - t:  # full sweep over every open candidate
                blk = np.flatnonzero(np.isfinite(bound))
                rest = -np.inf
            else:
                part = np.argpartition(-bound, size)
                blk, rest = part[:size], bound[part[size]]
            exact = np.maximum(weights[blk] * np.einsum("ij,ij->i", d[blk] @ a, d[blk]), 0.0)
            bound[blk] = exact
            best = exact.max()
            if best > rest or size >= n - t:
                tied = blk[exact == best]
                j = int(tied[np.lexsort((tied, keys[tied]))[0]])
                break
            size *= 4
        picked[t] = j
        v = a @ d[j]
        a -= weights[j] * np.outer(v, v) / (1.0 + bound[j])
        bound[j] = -np.inf
    return picked


def greedy_or_topc(d: np.ndarray, weights: np.ndarray, c: int, prior: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The greedy design, unless the paper's top-c leverage design has a larger log-det.

    Log-det is submodular, so greedy is within (1 - 1/e) of the optimum but not always
    better than a heuristic: on 3,000 random small instances pure greedy lost to top-c in
    12 (by up to 0.54 nats). Computing both costs one extra ``O(n H^2)`` pass, and makes
    ``greedy`` never worse than ``topc``.
    """
    g = greedy_logdet(d, weights, c, prior, keys)
    t = leverage_topc(d, weights, c, prior, keys)
    return t if log_det(d, weights, t, prior) > log_det(d, weights, g, prior) else g


# --- coreset ---------------------------------------------------------------------------


def kmeans(z: np.ndarray, k: int, *, seed: int, iters: int = 20) -> np.ndarray:
    """Seeded k-means++ then Lloyd iterations; returns the cluster of each row."""
    n = len(z)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centers = [z[rng.integers(n)]]
    for _ in range(1, k):
        dist = np.min(((z[:, None, :] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1)
        total = dist.sum()
        centers.append(z[rng.choice(n, p=dist / total)] if total > 0 else z[rng.integers(n)])
    centers = np.asarray(centers)
    label = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        dist = ((z**2).sum(1)[:, None] - 2 * z @ centers.T + (centers**2).sum(1)[None])
        new = dist.argmin(1)
        if _ > 0 and np.array_equal(new, label):
            break
        label = new
        for i in range(k):
            members = label == i
            if members.any():
                centers[i] = z[members].mean(0)
    return label


def coreset_sensitivity(z: np.ndarray, *, radius: float, k: int = 6, seed: int = 0) -> np.ndarray:
    """Huggins et al. (2016), Alg. 1: upper bound on each point's sensitivity.

    With ``z_n = y_n x_n`` clustered into ``G_1..G_k``::

        m_n = N / (1 + sum_i |G_i^(-n)| exp(-R || mean(G_i^(-n)) - z_n ||))

    where ``G_i^(-n)`` is cluster i without n and R bounds ``||theta||``.
    """
    n = len(z)
    label = kmeans(z, k, seed=seed)
    kk = int(label.max()) + 1
    counts = np.bincount(label, minlength=kk).astype(np.float64)
    sums = np.zeros((kk, z.shape[1]))
    np.add.at(sums, label, z)
    total = np.zeros(n)
    for i in range(kk):
        own = label == i
        size = counts[i] - own  # |G_i^(-n)|
        mean = np.where(size[:, None] > 0, (sums[i][None] - own[:, None] * z) / np.maximum(size, 1)[:, None], 0.0)
        dist = np.linalg.norm(mean - z, axis=1)
        total += size * np.exp(-radius * dist)
    return n / (1.0 + total)


def coreset_select(d: np.ndarray, w: np.ndarray, c: int, keys: np.ndarray, *, k: int = 6, radius: float | None = None, seed: int = 0) -> np.ndarray:
    """c distinct pairs drawn with probability proportional to their sensitivity.

    Unlabelled pairs have no ``y`` yet: ``z_i = sign(w . d_i) d_i``, the model's predicted
    orientation **(our choice)**. ``R`` defaults to ``max(||w||, 1)`` **(our choice)**.
    Sampling without replacement is Gumbel-top-c with the seeded keys: order independent.
    """
    s = np.where(d @ w >= 0, 1.0, -1.0)
    r = max(float(np.linalg.norm(w)), 1.0) if radius is None else radius
    m = coreset_sensitivity(s[:, None] * d, radius=r, k=k, seed=seed)
    gumbel = np.log(m) - np.log(-np.log(base.uniform(keys)))
    return base.rank(gumbel, keys, "largest")[:c]


# --- BatchBALD --------------------------------------------------------------------------


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def batchbald_select(
    d: np.ndarray,
    w: np.ndarray,
    c: int,
    keys: np.ndarray,
    *,
    precision: np.ndarray,
    samples: int = 32,
    max_configs: int = 128,
    seed: int = 0,
) -> np.ndarray:
    """Greedy BatchBALD over a Laplace last layer ``w_k ~ N(w, precision^-1)``.

    Picks ``argmax_i H(y_B, y_i) - E_w H(y_i | w)`` (the conditional entropies of the
    batch B already chosen are a constant). ``H(y_B, y_i)`` is computed from
    ``C[k, s] = P(config s of y_B | w_k)``: exactly over all ``2^|B|`` configurations
    while that is <= ``max_configs``, then with ``max_configs`` sampled configurations
    weighted by ``1 / (S q(s))``, ``q(s) = mean_k C[k, s]``.
    """
    with one_blas_thread():
        return _batchbald(d, w, c, keys, precision, samples, max_configs, seed)


def _batchbald(d, w, c, keys, precision, samples, max_configs, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n, h = d.shape
    c = min(c, n)
    chol = np.linalg.cholesky(np.linalg.inv(precision))
    ws = w[None] + rng.standard_normal((samples, h)) @ chol.T  # [K, H]
    p = sigmoid(d @ ws.T)  # [n, K]
    cond = _binary_entropy(p).mean(1)  # E_w H(y_i | w)
    conf = np.ones((samples, 1))  # C[k, s]
    weight = np.ones(1)  # per-configuration weight of the entropy sum
    origin = labels = None  # sampled mode: which w_k drew each config, and its labels
    picked = np.empty(c, dtype=np.int64)
    open_ = np.ones(n, dtype=bool)
    for t in range(c):
        joint = 0.0
        for py in (p, 1.0 - p):
            j = py @ conf / samples  # [n, S]: P(config s, y_i = y)
            joint = joint - (j * np.log(np.clip(j, 1e-300, None))) @ weight
        score = np.where(open_, joint - cond, -np.inf)
        i = _argmax(score, keys)
        picked[t] = i
        open_[i] = False
        if origin is None and conf.shape[1] * 2 <= max_configs:  # exact: branch every config
            conf = np.concatenate([conf * p[i][:, None], conf * (1 - p[i])[:, None]], axis=1)
            weight = np.ones(conf.shape[1])
            continue
        if origin is None:  # switch to sampled configurations of the batch so far
            origin = rng.integers(samples, size=max_configs)
            labels = rng.random((max_configs, t + 1)) < p[picked[: t + 1]][:, origin].T
            pb = p[picked[: t + 1]]  # [b, K]
            conf = np.exp(labels.astype(np.float64) @ np.log(np.clip(pb, 1e-300, None)) + (~labels).astype(np.float64) @ np.log(np.clip(1 - pb, 1e-300, None))).T
        else:
            y = rng.random(max_configs) < p[i, origin]
            conf = conf * np.where(y[None], p[i][:, None], (1 - p[i])[:, None])
        q = conf.mean(0)
        weight = 1.0 / (max_configs * np.clip(q, 1e-300, None))
    return picked


# --- candidate pools ---------------------------------------------------------------------

POOLS = ("in_prompt", "cross_prompt")


def candidate_pool(responses: base.Source, *, pool: str = "in_prompt", size: int | None = None, seed: int = 0) -> pa.Table:
    """Candidate pairs ``(prompt_id, a_id, b_id)`` with ``a_id < b_id``.

    ``in_prompt``: every pair of one prompt's responses with distinct texts (a seeded
    random ``size`` of them when given). ``cross_prompt``: ``size`` distinct pairs drawn
    uniformly among all pairs of all responses (any two prompts; ``prompt_id`` is a's).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    rows = base.canonical(base.read_columns(responses, ["prompt_id", "completion_id"], "responses", optional=("completion",)), ["completion_id"] if pool == "cross_prompt" else ["prompt_id", "completion_id"])
    base.check_unique(rows, "completion_id", "responses")
    cid = rows.column("completion_id")
    h = base.id_hashes(cid)
    n = rows.num_rows
    if pool == "in_prompt":
        a, b = base.within_group_pairs(base.group_codes(rows.column("prompt_id")))
        if "completion" in rows.column_names:
            t = base.text_codes(rows.column("completion"))
            a, b = a[t[a] != t[b]], b[t[a] != t[b]]
        if size is not None and size < len(a):
            keep = np.sort(base.rank(np.zeros(len(a)), base.pair_keys(h[a], h[b], seed), "random")[:size])
            a, b = a[keep], b[keep]
    else:
        total = n * (n - 1) // 2
        if size is None or size >= total:
            a, b = np.triu_indices(n, 1)
        else:
            rng = np.random.default_rng(seed)
            got = np.zeros(0, dtype=np.int64)
            while len(got) < size:
                i = rng.integers(n, size=2 * (size - len(got)) + 16)
                j = rng.integers(n, size=len(i))
                ok = i != j
                code = np.minimum(i, j)[ok] * n + np.maximum(i, j)[ok]
                _, first = np.unique(np.concatenate([got, code]), return_index=True)
                got = np.concatenate([got, code])[np.sort(first)][:size]
            got = np.sort(got)
            a, b = got // n, got % n
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return pa.table({"prompt_id": rows.column("prompt_id").take(a), "a_id": cid.take(a), "b_id": cid.take(b)})


# --- selection ---------------------------------------------------------------------------

STRATEGIES = ("dopt", "pa_dopt", "xtx", "entropy", "maxdiff", "coreset", "batchbald", "random")


def choose(
    strategy: str,
    d: np.ndarray,
    w: np.ndarray,
    c: int,
    keys: np.ndarray,
    *,
    past: np.ndarray | None = None,
    sigma: float = 1.0,
    solver: str = "greedy",
    seed: int = 0,
    **options,
) -> np.ndarray:
    """Indices (into the n candidates) of the c pairs a strategy picks.

    Args:
        d: ``[n, H]`` ``phi(a) - phi(b)`` of the candidates; ``w``: ``[H]`` last-layer weights.
        keys: ``[n]`` seeded tie-break keys (order independence).
        past: ``[m, H]`` ``phi`` differences of the already labelled pairs (``pa_dopt``,
            ``batchbald``), computed with the current model.
        sigma: prior standard deviation of ``w`` (the ``I/sigma^2`` term).
        solver: ``greedy`` | ``topc`` for the log-det strategies.
    """
    n = len(d)
    c = min(c, n)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if c <= 0:
        return np.zeros(0, dtype=np.int64)
    if strategy in ("dopt", "pa_dopt", "xtx"):
        weights = np.ones(n) if strategy == "xtx" else fisher_weights(d, w)
        past_arg = past if strategy == "pa_dopt" else None
        prior = prior_matrix(d.shape[1], sigma, past_arg, None if past_arg is None else fisher_weights(past_arg, w))
        if solver == "greedy":
            return greedy_or_topc(d, weights, c, prior, keys)
        if solver == "topc":
            return leverage_topc(d, weights, c, prior, keys)
        raise ValueError(f"solver must be 'greedy' or 'topc', got {solver!r}")
    diff = np.abs(d @ w)
    if strategy == "entropy":
        return base.rank(diff, keys, "smallest")[:c]
    if strategy == "maxdiff":
        return base.rank(diff, keys, "largest")[:c]
    if strategy == "random":
        return base.rank(np.zeros(n), keys, "random")[:c]
    if strategy == "coreset":
        return coreset_select(d, w, c, keys, seed=seed, **options)
    precision = prior_matrix(d.shape[1], sigma, past, None if past is None else fisher_weights(past, w))
    return batchbald_select(d, w, c, keys, precision=precision, seed=seed, **options)


def _embedding_matrix(rows: pa.Table, where: str) -> np.ndarray:
    col = rows.column("embedding").combine_chunks()
    if col.null_count:
        i = int(np.flatnonzero(np.asarray(col.is_null().to_numpy(zero_copy_only=False)))[0])
        raise records.RecordError(f"{where}: row {i}, field 'embedding': missing")
    flat = np.asarray(pc.list_flatten(col).to_numpy(zero_copy_only=False), dtype=np.float64)
    lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False))
    if len(lengths) and (lengths != lengths[0]).any():
        i = int(np.flatnonzero(lengths != lengths[0])[0])
        raise records.RecordError(f"{where}: row {i}, field 'embedding': length {lengths[i]}, expected {lengths[0]}")
    return flat.reshape(len(col), -1 if len(col) else 0)


def response_embeddings(responses: base.Source, where: str = "responses") -> tuple[pa.Table, np.ndarray]:
    """(rows sorted by completion_id, [n, D] embeddings) from a table with an ``embedding`` list column."""
    rows = base.canonical(base.read_columns(responses, ["prompt_id", "completion_id", "embedding"], where), ["completion_id"])
    base.check_unique(rows, "completion_id", where)
    return rows, _embedding_matrix(rows, where)


def _lookup(ids: pa.ChunkedArray | pa.Array, known: pa.Array, where: str, field: str) -> np.ndarray:
    idx = pc.index_in(ids, value_set=known)
    if idx.null_count:
        i = int(np.flatnonzero(np.asarray(pc.is_null(idx).to_numpy(zero_copy_only=False)))[0])
        raise records.RecordError(f"{where}: row {i}, field {field!r}: {ids[i].as_py()!r} has no embedding")
    return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)


def select_arm(
    responses: base.Source,
    *,
    strategy: str = "dopt",
    count: int,
    model=None,
    pool: str | pa.Table = "in_prompt",
    pool_size: int | None = None,
    labelled: pa.Table | None = None,
    sigma: float = 1.0,
    solver: str = "greedy",
    seed: int = 0,
    **options,
) -> pa.Table:
    """Responses with embeddings -> the ``count`` CANDIDATES pairs to annotate next.

    Args:
        responses: ``prompt_id, completion_id, embedding`` (list of floats) per response.
        model: the current reward MLP (:func:`arm_model.build_model`); a fresh seeded one
            when None (the first round, no labels yet).
        pool: ``in_prompt`` | ``cross_prompt`` or a table of candidate ``a_id, b_id``.
        labelled: pairs labelled so far (``a_id, b_id``): excluded from the pool and, for
            ``pa_dopt`` and ``batchbald``, their Fisher information is the prior.
    Returns CANDIDATES rows with ``margin = |r_a - r_b|`` under the current model.
    """
    from iterdpo.selection import arm_model

    rows, emb = response_embeddings(responses)
    cid = rows.column("completion_id").combine_chunks()
    if model is None:
        model = arm_model.build_model(emb.shape[1], seed=seed)
    cands = pool if isinstance(pool, pa.Table) else candidate_pool(rows.select(["prompt_id", "completion_id"]), pool=pool, size=pool_size, seed=seed)
    if "prompt_id" not in cands.column_names:
        pid = rows.column("prompt_id").take(pa.array(_lookup(cands.column("a_id"), cid, "pool", "a_id")))
        cands = cands.append_column("prompt_id", pid)
    cands = base.canonical(cands, ["a_id", "b_id"])
    ia = _lookup(cands.column("a_id"), cid, "pool", "a_id")
    ib = _lookup(cands.column("b_id"), cid, "pool", "b_id")
    past = None
    if labelled is not None and labelled.num_rows:
        la = _lookup(labelled.column("a_id"), cid, "labelled", "a_id")
        lb = _lookup(labelled.column("b_id"), cid, "labelled", "b_id")
        n_resp = len(cid)
        seen = np.minimum(la, lb) * n_resp + np.maximum(la, lb)
        fresh = ~np.isin(np.minimum(ia, ib) * n_resp + np.maximum(ia, ib), seen)
        cands, ia, ib = cands.filter(pa.array(fresh)), ia[fresh], ib[fresh]
    phi, w = arm_model.features(model, emb)
    if labelled is not None and labelled.num_rows:
        past = phi[la] - phi[lb]
    d = phi[ia] - phi[ib]
    h = base.id_hashes(cid)
    keys = base.pair_keys(h[ia], h[ib], seed)
    pick = np.sort(choose(strategy, d, w, count, keys, past=past, sigma=sigma, solver=solver, seed=seed, **options))
    name = f"arm:{strategy}" + (f"/{solver}" if strategy in ("dopt", "pa_dopt", "xtx") else "") + (f"/{pool}" if isinstance(pool, str) else "")
    return base.candidates(cands.column("prompt_id").take(pick), cands.column("a_id").take(pick), cands.column("b_id").take(pick), np.abs(d[pick] @ w), name)


# --- simulated annotator and metrics ------------------------------------------------------


def simulate_preferences(gold_a: np.ndarray, gold_b: np.ndarray, keys: np.ndarray, *, scale: float, temperature: float = 1.0) -> np.ndarray:
    """Simulated annotator: ``a`` wins with ``P = sigmoid((g_a - g_b) / (scale * temperature))``.

    ``scale`` is ``std(g)`` over the gold rewards of the pool; the coin is the seeded key
    of the pair (order independent). Returns 1.0 where a wins, else 0.0.
    """
    if scale <= 0 or temperature <= 0:
        raise ValueError("scale and temperature must be > 0")
    p = sigmoid((np.asarray(gold_a) - np.asarray(gold_b)) / (scale * temperature))
    return (base.uniform(keys) < p).astype(np.float64)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.concatenate([[True], xs[1:] != xs[:-1]])
    grp = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(x))
    avg = (starts + ends - 1) / 2.0 + 1.0
    r = np.empty(len(x))
    r[order] = avg[grp]
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when either is constant."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else math.nan


def _groups(prompt_ids) -> list[np.ndarray]:
    codes = base.text_codes(pa.array(prompt_ids, pa.string()) if not isinstance(prompt_ids, (pa.Array, pa.ChunkedArray)) else prompt_ids)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return np.split(order, bounds)


def one_minus_spearman(prompt_ids, predicted: np.ndarray, gold: np.ndarray) -> float:
    """``1 - mean_x rho_x``: Spearman between predicted and gold rewards of each prompt's
    responses, averaged over prompts (prompts with < 2 responses or constant rewards skipped)."""
    rhos = [spearman(predicted[g], gold[g]) for g in _groups(prompt_ids) if len(g) >= 2]
    rhos = [r for r in rhos if not math.isnan(r)]
    return 1.0 - float(np.mean(rhos)) if rhos else math.nan


def best_of_n(prompt_ids, predicted: np.ndarray, gold: np.ndarray) -> float:
    """Mean over prompts of the gold reward of the response the model ranks highest."""
    return float(np.mean([gold[g[np.argmax(predicted[g])]] for g in _groups(prompt_ids)]))

"""Selector benchmarks: wall time of the large-input paths.

    python benchmarks/selection.py                 # all cases, default sizes
    python benchmarks/selection.py --case margin --prompts 35715 --n 8
    python benchmarks/selection.py --case dopt --candidates 100000 --dim 128 --choose 1000

Cases:
- ``margin``: SCORED rows of ``prompts x n`` responses -> all n(n-1)/2 pairs per prompt
  (35,715 x 8 -> 1,000,020 pairs), instance ``smallest`` + corpus ``smallest`` 50%,
  read from a Parquet file (so column reading is included).
- ``memory`` (not part of ``all``): the same margin selection, Parquet file on disk ->
  candidates file on disk, once through the streaming path (``select_margin(path)``:
  ``iter_batches`` + bounded heap + ``ParquetWriter``) and once through the previous
  whole-table path (read the needed columns whole, select in memory, write at once), each
  in a fresh subprocess (after a warm-up on 800 rows): wall time, peak RSS of the selection (VmHWM after resetting it
  through ``/proc/self/clear_refs`` once the imports are done, minus VmRSS then;
  ``ru_maxrss`` cannot be reset and a child inherits its parent's across fork/exec, so it
  only serves where clear_refs is missing), and Arrow's peak pool allocation
  (``pyarrow.default_memory_pool().max_memory()``).
- ``dopt``: greedy D-optimal design with Sherman-Morrison updates over ``candidates``
  feature differences of ``dim`` dims, choosing ``choose`` (plus the top-c comparison).
- ``sera``: SeRA offline selection over ``pairs`` offline pairs + bootstrapping over
  ``prompts x 4`` samples.
- ``arm``: select_arm end to end (features from the reward MLP, candidate pool,
  strategy) on a cross-prompt pool.
- ``simulate`` (not part of ``all``): active reward modelling rounds on a synthetic
  task, every strategy, 1 - Spearman and best-of-N after each round.

Prints one line per case: name, sizes, seconds (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iterdpo import records  # noqa: E402
from iterdpo.selection import arm, base, sera  # noqa: E402
from iterdpo.selection.margin import select_margin  # noqa: E402


def scored_table(prompts: int, n: int, seed: int = 0) -> pa.Table:
    """A synthetic SCORED table built column-wise (no per-row python objects)."""
    rng = np.random.default_rng(seed)
    pid = np.char.add("p", np.arange(prompts).astype(str))
    pids = np.repeat(pid, n)
    k = np.tile(np.char.zfill(np.arange(n).astype(str), 4), prompts)
    cid = np.char.add(np.char.add(pids, "-"), k)
    reward = np.round(rng.normal(size=prompts * n), 3)  # rounded: realistic ties
    ntok = rng.integers(5, 60, size=prompts * n)
    text = np.char.add("response ", rng.integers(0, 10**9, size=prompts * n).astype(str))
    return pa.table(
        {
            "prompt_id": pids, "completion_id": cid, "prompt": pa.repeat(pa.scalar("q"), prompts * n),
            "completion": text, "num_tokens": pa.array(ntok, pa.int32()),
            "finish_reason": pa.repeat(pa.scalar("stop"), prompts * n),
            "policy_logp": -ntok.astype(float), "ref_logp": -ntok.astype(float) - reward / 0.1,
            "reward": reward, "reward_norm": reward / ntok, "reward_simpo": -0.1 * np.ones(prompts * n),
            **{c: np.full(prompts * n, np.nan) for c in ("prev_policy_logp", "prev_ref_logp", "prev_reward")},  # not scored
        },
        schema=records.SCORED,
    )


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_margin(a) -> None:
    table = scored_table(a.prompts, a.n)
    pairs = a.prompts * a.n * (a.n - 1) // 2
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "scored.parquet"
        records.write_table(table, path)
        out = []
        s = best_of(lambda: out.append(select_margin(path, instance="smallest", corpus="smallest", corpus_fraction=0.5)), a.repeat)
    print(f"margin   {a.prompts} prompts x {a.n} = {pairs:,} candidate pairs -> {out[-1].num_rows:,} kept: {s:.2f} s")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _status_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process from /proc, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``), so the
    peak measures the selection, not the imports before it (ru_maxrss cannot be reset)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(a) -> None:
    """One path in this (fresh) process; prints a JSON line."""
    from iterdpo.selection import stream
    from iterdpo.selection.margin import MARGIN_COLUMNS

    pool = pa.default_memory_pool()
    kw = dict(instance="smallest", corpus="smallest", corpus_fraction=0.5)
    # warm-up on the first 800 rows: loads the code pages of the Arrow kernels both paths use,
    # so the peak below measures data, not libraries
    small = Path(a.out).with_name(f"warm-{a.mode}.parquet")
    pq.write_table(pa.Table.from_batches([next(pq.ParquetFile(a.path).iter_batches(batch_size=800))]), small)
    select_margin(small, **kw)
    select_margin(pq.read_table(small), **kw)
    reset = _reset_peak()
    before = _status_mib("VmRSS") if reset else _rss_mib()
    t = time.perf_counter()
    out = Path(a.out)
    if a.mode == "stream":
        table = select_margin(a.path, batch_size=a.batch_rows, **kw)
        stream.write_parquet(table, out)
    else:  # the previous path: the needed columns whole, in-memory selection, one write
        cols = ["prompt_id", "completion_id", "completion", MARGIN_COLUMNS["sum"]]
        table = select_margin(base.read_columns(a.path, cols), **kw)
        records.write_table(table, out)
    s = time.perf_counter() - t
    print(json.dumps({"mode": a.mode, "seconds": s, "kept": table.num_rows, "rss_before_mib": before,
                      "peak_rss_mib": _status_mib("VmHWM") if reset else _rss_mib(),
                      "arrow_peak_mib": pool.max_memory() / 2**20}))


def bench_memory(a) -> None:
    table = scored_table(a.prompts, a.n)
    pairs = a.prompts * a.n * (a.n - 1) // 2
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "scored.parquet"
        records.write_table(table, path)
        size = path.stat().st_size / 2**20
        del table
        res = {}
        for mode in ("whole", "stream"):
            cmd = [sys.executable, __file__, "--case", "memory-child", "--mode", mode, "--path", str(path), "--out", str(Path(d) / f"{mode}.parquet"), "--batch-rows", str(a.batch_rows)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            res[mode] = json.loads(line)
        same = pq.read_table(Path(d) / "whole.parquet").equals(pq.read_table(Path(d) / "stream.parquet"))
    print(f"memory   {a.prompts:,} prompts x {a.n} = {a.prompts * a.n:,} rows ({size:.1f} MiB Parquet) = {pairs:,} candidate pairs, "
          f"batch {a.batch_rows:,} rows; identical output: {same}")
    for mode, r in res.items():
        print(f"  {mode:6s} {r['seconds']:.2f} s, kept {r['kept']:,}; peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(+{r['peak_rss_mib'] - r['rss_before_mib']:.0f} over {r['rss_before_mib']:.0f} after imports); Arrow peak {r['arrow_peak_mib']:.0f} MiB")
    w, s_ = res["whole"], res["stream"]
    print(f"  ratio whole/stream: RSS growth {(w['peak_rss_mib'] - w['rss_before_mib']) / max(s_['peak_rss_mib'] - s_['rss_before_mib'], 1e-9):.1f}x, "
          f"Arrow peak {w['arrow_peak_mib'] / max(s_['arrow_peak_mib'], 1e-9):.1f}x, time {w['seconds'] / s_['seconds']:.2f}x")


def bench_dopt(a) -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(size=(a.candidates, a.dim)) / np.sqrt(a.dim)
    w = rng.normal(size=a.dim)
    keys = base.row_keys(np.arange(a.candidates, dtype=np.uint64), 0)
    weights = arm.fisher_weights(d, w)
    prior = arm.prior_matrix(a.dim, 1.0)
    picked = []
    s = best_of(lambda: picked.append(arm.greedy_logdet(d, weights, a.choose, prior, keys)), a.repeat)
    s2 = best_of(lambda: picked.append(arm.choose("dopt", d, w, a.choose, keys, solver="greedy")), a.repeat)
    t = best_of(lambda: picked.append(arm.leverage_topc(d, weights, a.choose, prior, keys)), a.repeat)
    g_ld = arm.log_det(d, weights, picked[0], prior)
    t_ld = arm.log_det(d, weights, picked[-1], prior)
    print(f"dopt     greedy (Sherman-Morrison) {a.candidates:,} x {a.dim} choose {a.choose:,}: {s:.2f} s; "
          f"solver='greedy' (greedy + top-c check) {s2:.2f} s; top-c {t:.2f} s; log-det greedy {g_ld:.1f} vs top-c {t_ld:.1f}")


def bench_sera(a) -> None:
    rng = np.random.default_rng(0)
    n = a.pairs
    ids = np.char.add("o", np.arange(2 * n).astype(str))
    pairs = pa.table({"prompt_id": np.char.add("p", np.arange(n).astype(str)), "chosen_id": ids[:n], "rejected_id": ids[n:],
                      "chosen_reward": rng.normal(size=n), "rejected_reward": rng.normal(size=n),
                      "prev_chosen_reward": rng.normal(size=n), "prev_rejected_reward": rng.normal(size=n)})
    samples = scored_table(a.prompts, 4).append_column("prev_reward", pa.array(rng.normal(size=a.prompts * 4)))
    out = []
    s = best_of(lambda: out.append(sera.select_sera(3, pairs, samples=samples, lam=0.3)), a.repeat)
    print(f"sera     {n:,} offline pairs + {a.prompts:,} prompts x 4 samples -> {out[-1].num_rows:,} pairs: {s:.2f} s")


def bench_arm(a) -> None:
    from iterdpo.selection import arm_model

    rng = np.random.default_rng(0)
    prompts, n, dim = 500, 10, a.dim
    pid = np.repeat(np.char.add("p", np.arange(prompts).astype(str)), n)
    cid = np.char.add(np.char.add(pid, "-"), np.tile(np.arange(n).astype(str), prompts))
    emb = rng.normal(size=(prompts * n, dim)).astype(np.float32)
    t = pa.table({"prompt_id": pid, "completion_id": cid,
                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim).cast(pa.list_(pa.float32()))})
    model = arm_model.build_model(dim, seed=0)
    for strategy in ("dopt", "batchbald"):
        out = []
        s = best_of(lambda strategy=strategy, out=out: out.append(arm.select_arm(t, strategy=strategy, count=125, pool="cross_prompt", pool_size=20000, model=model)), a.repeat)
        print(f"arm      {strategy}: 500 prompts x 10 responses, {dim}-dim embeddings, cross-prompt pool of 20,000, choose 125: {s:.2f} s")


def simulate(a) -> None:
    """Active reward modelling on a synthetic task: does the strategy matter?

    Responses: 500 train prompts x 10 (cross-prompt pool of 20,000 pairs redrawn per round)
    and 100 test prompts x 10; embeddings e = prompt vector + response vector (32 dims);
    gold g = tanh(e . u) + 0.5 (e . v)^2. Each round labels 125 pairs with the simulated
    annotator (temperature 1), retrains the reward MLP from scratch on all labels, and
    reports 1 - Spearman (mean over test prompts) and best-of-10 gold reward.
    """
    from iterdpo.selection import arm_model

    dim, per = 32, 10

    def world(prompts, seed):
        r = np.random.default_rng(seed)
        e = np.repeat(r.normal(size=(prompts, dim)), per, axis=0) + 0.7 * r.normal(size=(prompts * per, dim))
        pid = np.repeat(np.char.add("p", np.arange(prompts).astype(str)), per)
        cid = np.char.add(np.char.add(pid, f"-{seed}-"), np.tile(np.arange(per).astype(str), prompts))
        return pid, cid, e

    r0 = np.random.default_rng(123)
    u, v = r0.normal(size=dim) / np.sqrt(dim), r0.normal(size=dim) / np.sqrt(dim)
    gold_of = lambda e: np.tanh(e @ u) + 0.5 * (e @ v) ** 2  # noqa: E731
    strategies = a.strategies.split(",")
    print(f"simulate: rounds={a.rounds} x {a.batch} labels, seeds={a.seeds}; columns: 1-spearman / best-of-10 after each round")
    for strategy in strategies:
        res = []
        for seed in range(a.seeds):
            pid, cid, e = world(500, seed)
            tpid, _, te = world(100, 1000 + seed)
            g, tg = gold_of(e), gold_of(te)
            t = pa.table({"prompt_id": pid, "completion_id": cid,
                          "embedding": pa.FixedSizeListArray.from_arrays(pa.array(e.astype(np.float32).ravel()), dim).cast(pa.list_(pa.float32()))})
            index = {c: i for i, c in enumerate(cid.tolist())}
            labelled = None
            model = arm_model.build_model(dim, seed=seed)
            curve = []
            wins_all = np.zeros(0)
            for rnd in range(a.rounds):
                opts = {"max_configs": 64, "samples": 16} if strategy == "batchbald" else {}
                pick = arm.select_arm(t, strategy=strategy, count=a.batch, model=model, pool="cross_prompt", pool_size=20000,
                                      labelled=labelled, seed=seed * 100 + rnd, **opts).select(["a_id", "b_id"])
                labelled = pick if labelled is None else pa.concat_tables([labelled, pick])
                ia = np.array([index[x] for x in pick.column("a_id").to_pylist()])
                ib = np.array([index[x] for x in pick.column("b_id").to_pylist()])
                keys = base.pair_keys(base.id_hashes(pick.column("a_id")), base.id_hashes(pick.column("b_id")), seed)
                wins_all = np.concatenate([wins_all, arm.simulate_preferences(g[ia], g[ib], keys, scale=g.std())])
                la = np.array([index[x] for x in labelled.column("a_id").to_pylist()])
                lb = np.array([index[x] for x in labelled.column("b_id").to_pylist()])
                model = arm_model.build_model(dim, seed=seed)
                arm_model.fit_bradley_terry(model, e[la], e[lb], wins_all, epochs=30, seed=seed)
                pred = arm_model.rewards(model, te)
                curve.append((arm.one_minus_spearman(tpid, pred, tg), arm.best_of_n(tpid, pred, tg)))
            res.append(curve)
        mean = np.mean(np.array(res), axis=0)
        cells = "  ".join(f"{m:.3f}/{b:.3f}" for m, b in mean)
        print(f"  {strategy:10s} {cells}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["margin", "dopt", "sera", "arm", "simulate", "memory", "memory-child", "all"], default="all")
    p.add_argument("--batch-rows", type=int, default=8_192, help="rows per read batch of the streaming path (memory case)")
    p.add_argument("--mode", choices=["whole", "stream"], help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch", type=int, default=125)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--strategies", default="random,entropy,maxdiff,xtx,dopt,pa_dopt,coreset,batchbald")
    p.add_argument("--prompts", type=int, default=35715)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--candidates", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--choose", type=int, default=1000)
    p.add_argument("--pairs", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=1)
    a = p.parse_args()
    if a.case != "memory-child":
        print(f"cpu cores visible: {os.cpu_count()}, affinity: {len(os.sched_getaffinity(0))}")
    for case, fn in (("margin", bench_margin), ("dopt", bench_dopt), ("sera", bench_sera), ("arm", bench_arm)):
        if a.case in (case, "all"):
            fn(a)
    if a.case == "simulate":
        simulate(a)
    if a.case == "memory":
        bench_memory(a)
    if a.case == "memory-child":
        memory_child(a)


if __name__ == "__main__":
    main()

"""SeRA's stages (Ko et al., seed 003): the sample, select and annotate of ``select.selector: sera``.

SeRA trains on an offline preference set D and, from iteration 2 on, on pairs the
policy labels itself. With pi_0 the SFT model and reference = the previous iterate:

    iteration 1   train pi_1 on all of D (every implicit reward margin is 0 under pi_0)
    iteration t   score D's responses under pi_{t-1} (and pi_{t-2} for the ensemble);
                  sample N responses of pi_{t-1} for D's prompts and score them;
                  keep the top k1 offline pairs by ensemble IRM (their labels kept) and
                  the top k2 bootstrapped (argmax R, argmin R) pairs (self-labelled);
                  train pi_t from pi_{t-1} against pi_{t-1}

The scoring, training and evaluation stages are the loop's own: the offline responses
simply travel through scoring as completions (ids ``offline-<row>-chosen|rejected``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from iterdpo import loop, records
from iterdpo.rundir import key_of

OFFLINE_PREFIX = "offline-"


def offline(run: loop.Run) -> dict:
    """The offline preference set D, validated, as ``offline/pairs.parquet`` (OFFLINE_PAIRS)."""
    cfg, s = run.cfg, run.cfg.sera
    source = s.offline if s.offline in ("toy", "world") else run.model_key(s.offline)  # a file: its content
    bias = {"length_bias": s.offline_length_bias} if s.offline == "world" else {}
    key = key_of(offline=source, size=s.offline_size, noise=s.offline_noise, seed=cfg.run.seed, **bias)

    def write(tmp: Path) -> dict:
        if s.offline == "toy":
            from iterdpo.toy.task import offline_pairs

            prompts = records.load_prompts(run.prompt_file("train")).column("prompt").to_pylist()[: s.offline_size]
            path = tmp / "offline_source.jsonl"
            rows = offline_pairs(prompts, seed=loop.derived_seed(cfg, "offline"), noise=s.offline_noise)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif s.offline == "world":  # the world's train prompts, labelled by its length-biased, noisy annotator
            from iterdpo.toy.world_task import offline_pairs as world_pairs

            path = tmp / "offline_source.jsonl"
            rows = world_pairs(seed=loop.derived_seed(cfg, "offline"), length_bias=s.offline_length_bias,
                               noise=s.offline_noise, size=s.offline_size)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            from iterdpo.real.reviews import resolve  # the 'reviews' shorthand

            path = Path(resolve(s.offline, "offline"))
        table = records.load_preferences(path)
        if s.offline == "reviews":  # a built-in set: offline_size applies as for toy / world
            table = table.slice(0, s.offline_size)
        records.write_table(table, tmp / "pairs.parquet")
        return {"pairs": table.num_rows, "prompts": pc.count_distinct(table.column("prompt_id")).as_py()}

    return loop._stage(run, None, "offline", key, write)


def _offline_completions(pairs: pa.Table) -> pa.Table:
    """Both responses of every offline pair as COMPLETIONS rows (scoring recounts tokens)."""
    rows = []
    for p in pairs.to_pylist():
        for side in ("chosen", "rejected"):
            rows.append(
                {"prompt_id": p["prompt_id"], "completion_id": p[f"{side}_id"], "prompt": p["prompt"],
                 "completion": p[side], "num_tokens": 0, "finish_reason": "stop"}
            )
    return records.from_rows(rows, records.COMPLETIONS)


def sample(run: loop.Run, k: int) -> dict:
    """Iteration k's completions: D's responses, plus (k >= 2) N samples of pi_{k-1} per D prompt."""
    cfg = run.cfg
    keys = {"offline": offline(run)["key"]}
    pairs = run.data(None, "offline", "pairs.parquet")
    if k >= 2:
        prompts = records.from_rows(
            [{"prompt_id": pid, "prompt": p, "source": "offline"} for pid, p in
             dict(zip(pairs.column("prompt_id").to_pylist(), pairs.column("prompt").to_pylist())).items()],
            records.PROMPTS,
        )
        if cfg.sera.bootstrap_prompts and cfg.sera.bootstrap_prompts < prompts.num_rows:
            order = sorted(range(prompts.num_rows))
            random.Random(loop.derived_seed(cfg, k, "bootstrap")).shuffle(order)
            prompts = prompts.take(sorted(order[: cfg.sera.bootstrap_prompts]))
        s = cfg.sample
        bkey = key_of(model=run.model_key(run.policy(k - 1)), offline=keys["offline"], sample=s.model_dump(),
                      model_cfg=cfg.model.model_dump(), bootstrap=cfg.sera.bootstrap_prompts, seed=cfg.run.seed, k=k)
        keys["bootstrap"] = loop._sample(run, run.policy(k - 1), prompts, "bootstrap", k, s.n, s.temperature, s.max_tokens,
                                         loop.derived_seed(cfg, k, "sample"), bkey)["key"]

    def write(tmp: Path) -> dict:
        parts = [_offline_completions(pairs)]
        if k >= 2:
            parts.append(run.data(k, "bootstrap", "completions.parquet"))
        table = pa.concat_tables(parts)
        records.write_table(table, tmp / "completions.parquet")
        return {"offline_completions": parts[0].num_rows, "sampled_completions": table.num_rows - parts[0].num_rows}

    return loop._stage(run, k, "sample", key_of(**keys), write)


def select(run: loop.Run, k: int) -> dict:
    """D_k = top-k1 offline pairs + top-k2 bootstrapped pairs (all of D at k = 1)."""
    from iterdpo.selection.sera import select_sera

    cfg, s = run.cfg, run.cfg.sera
    key = key_of(inp=run.stage_key(k, "score"), sera=s.model_dump(), loss=cfg.train.loss, seed=cfg.run.seed)

    def write(tmp: Path) -> dict:
        scored = run.data(k, "score", "scored.parquet")
        is_offline = pc.starts_with(scored.column("completion_id"), OFFLINE_PREFIX)
        samples = scored.filter(pc.invert(is_offline))
        table = select_sera(
            k, run.data(None, "offline", "pairs.parquet"), scored.filter(is_offline), samples if samples.num_rows else None,
            k1_fraction=s.k1_fraction, k2_fraction=s.k2_fraction, lam=s.ensemble_lambda, loss=cfg.train.loss,
            seed=loop.derived_seed(cfg, k, "select"),
        )
        records.write_table(table, tmp / "candidates.parquet")
        margins = [abs(m) for m in table.column("margin").to_pylist()]
        from_offline = table.filter(pc.equal(table.column("source"), "offline"))
        return {
            "pairs": table.num_rows,
            "offline": from_offline.num_rows,
            "bootstrap": table.num_rows - from_offline.num_rows,
            "offline_dropped": run.stats(None, "offline")["pairs"] - from_offline.num_rows,
            "mean_abs_margin": sum(margins) / max(len(margins), 1),
        }

    return loop._stage(run, k, "select", key, write)


def annotate(run: loop.Run, k: int) -> dict:
    """Offline pairs keep their labels; bootstrapped pairs are labelled by the implicit reward."""
    from iterdpo.annotation import preference_rows

    cfg = run.cfg
    key = key_of(inp=run.stage_key(k, "select"), ref=cfg.run.reference)

    def write(tmp: Path) -> dict:
        by_id = records.rows_by(run.data(k, "score", "scored.parquet"), "completion_id")
        chosen = run.data(k, "select", "candidates.parquet").to_pylist()
        oriented = [(by_id[p["chosen_id"]], by_id[p["rejected_id"]], "offline" if p["source"] == "offline" else "implicit") for p in chosen]
        rows = preference_rows(oriented, reference=cfg.run.reference, init=cfg.run.init, iteration=k)
        records.write_table(records.from_rows(rows, records.PREFERENCES), tmp / "pairs.parquet")
        return {"candidates": len(chosen), "pairs": len(rows), "ties": 0, "unlabelled": 0}

    return loop._stage(run, k, "annotate", key, write)


STAGE_FNS = {**loop.STAGE_FNS, "sample": sample, "select": select, "annotate": annotate}

"""SeRA's stages and pipeline (Ko et al., seed 003): ``select.selector: sera``.

SeRA trains on an offline preference set D and, from iteration 2 on, on pairs the
policy labels itself. With pi_0 the SFT model and reference = the previous iterate:

    iteration 1   train pi_1 on all of D (every implicit reward margin is 0 under pi_0)
    iteration t   score D's responses under pi_{t-1} (and pi_{t-2} for the ensemble);
                  sample N responses of pi_{t-1} for D's prompts and score them;
                  keep the top k1 offline pairs by ensemble IRM (their labels kept) and
                  the top k2 bootstrapped (argmax R, argmin R) pairs (self-labelled);
                  train pi_t from pi_{t-1} against pi_{t-1}

Stages: ``offline`` (D, once per run), ``bootstrap`` (pi_{k-1}'s samples, k >= 2), and
SeRA's own ``sample`` (D's responses + the bootstrap samples), ``select`` (writes the
already-oriented ``sera_pairs``, not unlabelled candidates) and ``annotate`` (offline
labels kept, bootstrapped pairs labelled by the implicit reward). Scoring, training and
evaluation are the default pipeline's: the offline responses simply travel through
scoring as completions (ids ``offline-<row>-chosen|rejected``).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from iterdpo import builtins
from iterdpo.pipeline.engine import Call, Ref, Stage, Value, policy_input
from iterdpo.stages.default import DEFAULT
from iterdpo.stages.sample import generate
from iterdpo.stages.select import selection_stats, selector_check

OFFLINE_PREFIX = "offline-"


def _offline_reads(run, k):
    s = run.cfg.sera
    if s.offline in builtins.SFT_TASKS:  # generated in the stage from the seed
        return {"source": Value(s.offline)}
    from iterdpo.real.reviews import resolve  # the 'reviews' shorthand: a file the task builds once

    path = resolve(s.offline, "offline")
    return {"source": Value(hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16], path)}  # a file: its content


def _offline(call: Call) -> dict:
    """The offline preference set D, validated."""
    import pyarrow.compute as pc

    from iterdpo import records

    s, tmp = call.cfg.sera, call.tmp
    if s.offline == "toy":
        from iterdpo.toy.task import offline_pairs

        prompts = records.load_prompts(call.run.prompt_file("train")).column("prompt").to_pylist()[: s.offline_size]
        path = tmp / "offline_source.jsonl"
        rows = offline_pairs(prompts, seed=call.seed("offline"), noise=s.offline_noise)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif s.offline == "world":  # the world's train prompts, labelled by its length-biased, noisy annotator
        from iterdpo.toy.world_task import offline_pairs as world_pairs

        path = tmp / "offline_source.jsonl"
        rows = world_pairs(seed=call.seed("offline"), length_bias=s.offline_length_bias, noise=s.offline_noise, size=s.offline_size)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path = Path(call.read("source"))
    table = records.load_preferences(path)
    if s.offline == "reviews":  # a built-in set: offline_size applies as for toy / world
        table = table.slice(0, s.offline_size)
    call.write("offline_pairs", table)
    return {"pairs": table.num_rows, "prompts": pc.count_distinct(table.column("prompt_id")).as_py()}


OFFLINE = Stage("offline", _offline, writes=("offline_pairs",), reads=_offline_reads,
                fields=("sera.offline", "sera.offline_size", "sera.offline_noise", "sera.offline_length_bias", "run.seed", "data.prompts"))


def _bootstrap(call: Call) -> dict:
    """N samples of pi_{k-1} for (a seeded subset of) D's prompts."""
    from iterdpo import records

    cfg, k = call.cfg, call.k
    pairs = call.read("offline")
    prompts = records.from_rows(
        [{"prompt_id": pid, "prompt": p, "source": "offline"} for pid, p in
         dict(zip(pairs.column("prompt_id").to_pylist(), pairs.column("prompt").to_pylist(), strict=True)).items()],
        records.PROMPTS,
    )
    if cfg.sera.bootstrap_prompts and cfg.sera.bootstrap_prompts < prompts.num_rows:
        order = sorted(range(prompts.num_rows))
        random.Random(call.seed(k, "bootstrap")).shuffle(order)
        prompts = prompts.take(sorted(order[: cfg.sera.bootstrap_prompts]))
    s = cfg.sample
    return generate(call, call.model("policy"), prompts, n=s.n, temperature=s.temperature, max_tokens=s.max_tokens,
                    seed=call.seed(k, "sample"))


BOOTSTRAP = Stage("bootstrap", _bootstrap, writes=("completions",), fields=("sample", "model", "sera.bootstrap_prompts", "run.seed"),
                  reads=lambda run, k: {"offline": Ref("offline", None, "offline_pairs"), "policy": policy_input(run, k - 1)})


def offline_completions(pairs):
    """Both responses of every offline pair as COMPLETIONS rows (scoring recounts tokens)."""
    from iterdpo import records

    rows = []
    for p in pairs.to_pylist():
        for side in ("chosen", "rejected"):
            rows.append({"prompt_id": p["prompt_id"], "completion_id": p[f"{side}_id"], "prompt": p["prompt"],
                         "completion": p[side], "num_tokens": 0, "finish_reason": "stop"})
    return records.from_rows(rows, records.COMPLETIONS)


def _sample_reads(run, k):
    inputs = {"offline": Ref("offline", None, "offline_pairs")}
    if k >= 2:
        inputs["bootstrap"] = Ref("bootstrap", k, "completions")
    return inputs


def _sample(call: Call) -> dict:
    """Iteration k's completions: D's responses, plus (k >= 2) N samples of pi_{k-1} per D prompt."""
    import pyarrow as pa

    parts = [offline_completions(call.read("offline"))]
    if "bootstrap" in call.inputs:
        parts.append(call.read("bootstrap"))
    table = pa.concat_tables(parts)
    call.write("completions", table)
    return {"offline_completions": parts[0].num_rows, "sampled_completions": table.num_rows - parts[0].num_rows}


SAMPLE = Stage("sample", _sample, writes=("completions",), reads=_sample_reads)


def _select(call: Call) -> dict:
    """D_k = top-k1 offline pairs + top-k2 bootstrapped pairs (all of D at k = 1)."""
    import pyarrow.compute as pc

    from iterdpo.selection.sera import select_sera

    cfg, s, k = call.cfg, call.cfg.sera, call.k
    scored, offline = call.read("scored"), call.read("offline")
    is_offline = pc.starts_with(scored.column("completion_id"), OFFLINE_PREFIX)
    samples = scored.filter(pc.invert(is_offline))
    table = select_sera(
        k, offline, scored.filter(is_offline), samples if samples.num_rows else None,
        k1_fraction=s.k1_fraction, k2_fraction=s.k2_fraction, lam=s.ensemble_lambda, loss=cfg.train.loss,
        seed=call.seed(k, "select"),
    )
    call.write("sera_pairs", table)
    from_offline = table.filter(pc.equal(table.column("source"), "offline"))
    stats = selection_stats(call, [abs(m) for m in table.column("margin").to_pylist()]) if k > 1 else {
        "pairs": table.num_rows, "mean_abs_margin": sum(abs(m) for m in table.column("margin").to_pylist()) / max(table.num_rows, 1)}
    return {
        "pairs": stats["pairs"],
        "offline": from_offline.num_rows,
        "bootstrap": table.num_rows - from_offline.num_rows,
        "offline_dropped": offline.num_rows - from_offline.num_rows,
        "mean_abs_margin": stats["mean_abs_margin"],
    }


SELECT = Stage("select", _select, writes=("sera_pairs",), fields=("sera", "train.loss", "run.seed"), check=selector_check("sera"),
               reads=lambda run, k: {"scored": Ref("score", k, "scored"), "offline": Ref("offline", None, "offline_pairs")})


def _annotate(call: Call) -> dict:
    """Offline pairs keep their labels; bootstrapped pairs are labelled by the implicit reward."""
    from iterdpo import records
    from iterdpo.annotation import labelled_rows

    by_id = records.rows_by(call.read("scored"), "completion_id")
    chosen = call.read("pairs").to_pylist()
    oriented = [(by_id[p["chosen_id"]], by_id[p["rejected_id"]], "offline" if p["source"] == "offline" else "implicit") for p in chosen]
    rows = labelled_rows(oriented, iteration=call.k)
    call.write("labelled", records.from_rows(rows, records.LABELLED))
    return {"candidates": len(chosen), "pairs": len(rows), "ties": 0, "unlabelled": 0}


ANNOTATE = Stage("annotate", _annotate, writes=("labelled",),
                 reads=lambda run, k: {"pairs": Ref("select", k, "sera_pairs"), "scored": Ref("score", k, "scored")})

SERA = {**DEFAULT, "offline": OFFLINE, "bootstrap": BOOTSTRAP, "sample": SAMPLE, "select": SELECT, "annotate": ANNOTATE}

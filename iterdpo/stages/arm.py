"""ARM's select stage and pipeline (Shen et al., seed 000): active reward modelling picks the pairs.

A Bradley-Terry MLP (``arm`` section) on pi_{k-1}'s embeddings, fitted on every pair
labelled in iterations 1..k-1 (re-embedded by pi_{k-1}), chooses ceil(corpus_fraction *
prompts) same-prompt pairs of this iteration's responses by ``arm.strategy``; DPO needs
both responses of a pair to answer one prompt, so the pool is always in-prompt here.
"""

from __future__ import annotations

import math

from iterdpo.pipeline.engine import Call, Ref, Stage, policy_input
from iterdpo.stages.default import DEFAULT
from iterdpo.stages.select import selection_stats, selector_check


def _reads(run, k):
    return {"scored": Ref("score", k, "scored"), "policy": policy_input(run, k - 1),
            **{f"labelled_{i}": Ref("annotate", i, "labelled") for i in range(1, k)}}


def _write(call: Call) -> dict:
    import numpy as np
    import pyarrow as pa

    from iterdpo import records
    from iterdpo.selection import arm, arm_model, embed, stream

    cfg, a, k = call.cfg, call.cfg.arm, call.k
    scored = call.read("scored")
    count = math.ceil(cfg.select.corpus_fraction * len(set(scored.column("prompt_id").to_pylist())))
    seed = call.seed(k, "select")
    past = [call.read(f"labelled_{i}") for i in range(1, k)]
    past_rows = {}
    for p in (r for t in past for r in t.to_pylist()):
        for side in ("chosen", "rejected"):
            past_rows[p[f"{side}_id"]] = {
                "prompt_id": p["prompt_id"], "completion_id": p[f"{side}_id"], "prompt": p["prompt"], "completion": p[side],
                "num_tokens": 0, "finish_reason": "stop" if p[f"{side}_stopped"] else "length",
            }
    current = scored.select(records.COMPLETIONS.names).cast(records.COMPLETIONS)
    responses = pa.concat_tables([current, records.from_rows(list(past_rows.values()), records.COMPLETIONS)])
    emb = embed.policy_embeddings(responses, call.model("policy"), tokenizer_path=cfg.model.tokenizer,
                                  max_prompt_length=cfg.model.max_prompt_length, max_length=cfg.model.max_length)
    model = arm_model.build_model(emb.shape[1], hidden=a.hidden, layers=a.layers, seed=seed)
    labelled = None
    if past_rows:
        pairs = pa.concat_tables(past)
        at = {cid: i for i, cid in enumerate(responses.column("completion_id").to_pylist())}
        chosen = np.array([at[c] for c in pairs.column("chosen_id").to_pylist()])
        rejected = np.array([at[c] for c in pairs.column("rejected_id").to_pylist()])
        arm_model.fit_bradley_terry(model, emb[chosen], emb[rejected], np.ones(len(chosen)), epochs=a.epochs, lr=a.learning_rate, seed=seed)
        labelled = pa.table({"a_id": pairs.column("chosen_id"), "b_id": pairs.column("rejected_id")})
    pool = arm.candidate_pool(current, pool="in_prompt", size=a.pool_size, seed=seed)
    table = arm.select_arm(embed.with_embeddings(responses, emb), strategy=a.strategy, count=count, model=model, pool=pool,
                           labelled=labelled, sigma=a.sigma, solver=a.solver, seed=seed)
    stream.write_parquet(table, call.tmp / "candidates.parquet")
    return selection_stats(call, table.column("margin").to_pylist())


SELECT = Stage("select", _write, writes=("candidates",), fields=("select", "arm", "model", "run.seed"), reads=_reads,
               check=selector_check("arm"))

ARM = {**DEFAULT, "select": SELECT}

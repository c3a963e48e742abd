"""score: log-probs of every completion under pi_{k-1} and its reference -> implicit rewards (SCORED).

Runs on every rank of a launch (sharded); rank 0 gathers and writes. With
``score.prev_policy`` (SeRA's ensemble) pi_{k-2} and its reference are scored too, once
pi_{k-2} is an aligned model (k >= 3).
"""

from __future__ import annotations

from iterdpo.pipeline.engine import Call, Ref, Stage, policy_input, reference_input


def _reads(run, k):
    inputs = {"completions": Ref("sample", k, "completions"), "policy": policy_input(run, k - 1),
              "reference": reference_input(run, k - 1)}
    if run.cfg.score.prev_policy and k >= 3:
        inputs.update(prev_policy=policy_input(run, k - 2), prev_reference=reference_input(run, k - 2))
    return inputs


def _write(call: Call) -> dict:
    from iterdpo import scoring, truncation

    cfg = call.cfg
    prev = "prev_policy" in call.inputs
    table = scoring.score(
        call.read("completions"), call.model("policy"), call.model("reference"),
        tokenizer_path=cfg.model.tokenizer, model_cfg=cfg.model, beta=cfg.score.beta, batch_tokens=cfg.score.batch_tokens,
        prev_policy_path=call.model("prev_policy") if prev else None, prev_ref_path=call.model("prev_reference") if prev else None,
        shard_dir=call.partial(), shard_rows=cfg.score.shard_rows, share_prompts=cfg.score.share_prompts, max_pad=cfg.score.max_pad,
    )
    if table is None:  # not rank 0: its shards are written, rank 0 gathered them
        return {}
    call.write("scored", table)
    rewards = table.column("reward").to_pylist()
    cut = truncation.completions_stats(table, call.model("policy"), cfg.model, call.where)
    return {"completions": table.num_rows, "mean_reward": sum(rewards) / max(len(rewards), 1), **cut}


SCORE = Stage("score", _write, writes=("scored",), fields=("score", "model"), reads=_reads, all_ranks=True)

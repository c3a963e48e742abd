"""Scoring: completions -> implicit rewards under the current policy and its reference.

For each completion y of prompt x, with pi = the policy that sampled it and ref = the
reference pi was trained against::

    policy_logp  = log pi(y|x)        (summed over response tokens, see iterdpo.logprobs)
    ref_logp     = log ref(y|x)       (NaN when the run has no reference, i.e. SimPO)
    reward       = beta * (policy_logp - ref_logp)      or r_simpo without a reference
    reward_norm  = reward / |y|
    reward_simpo = beta * policy_logp / |y|

Both log-probs come from the exact HF routine, so training can reuse them as reference
log-probs instead of loading a reference model.
"""

from __future__ import annotations

import math

import pyarrow as pa

from iterdpo import records


def load_model(path: str, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))


def score(
    completions: pa.Table,
    policy_path: str,
    ref_path: str | None,
    *,
    tokenizer_path: str | None,
    model_cfg,
    beta: float,
    batch_tokens: int,
) -> pa.Table:
    """Add policy/reference log-probs and implicit rewards to a COMPLETIONS table."""
    from transformers import AutoTokenizer

    from iterdpo.logprobs import score_logps

    rows = completions.to_pylist()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or policy_path)
    kw = dict(max_prompt_length=model_cfg.max_prompt_length, max_length=model_cfg.max_length, batch_tokens=batch_tokens)
    policy_logp, ntok = score_logps(load_model(policy_path, model_cfg.dtype), tokenizer, rows, progress="score policy", **kw)
    if ref_path is None:
        ref_logp = [math.nan] * len(rows)
    elif ref_path == policy_path:  # iteration 1: the policy is its own reference
        ref_logp = policy_logp
    else:
        ref_logp, _ = score_logps(load_model(ref_path, model_cfg.dtype), tokenizer, rows, progress="score reference", **kw)
    for r, lp, rl, n in zip(rows, policy_logp, ref_logp, ntok):
        n = max(n, 1)
        simpo = beta * lp / n
        reward = simpo if ref_path is None else beta * (lp - rl)
        r.update(policy_logp=lp, ref_logp=rl, reward=reward, reward_norm=reward / n, reward_simpo=simpo)
        r["num_tokens"] = n  # tokens as scored (after re-tokenisation and truncation)
    return records.from_rows(rows, records.SCORED)

"""sample: pi_{k-1} answers iteration k's prompts, sample.n times each (COMPLETIONS)."""

from __future__ import annotations

import hashlib

from iterdpo.pipeline.engine import Call, Stage, Value, policy_input


def generate(call: Call, model: str, prompts, *, n: int, temperature: float, max_tokens: int, seed: int,
             top_p: float | None = None, top_k: int | None = None) -> dict:
    """Sample ``n`` responses per prompt with ``model`` into the stage's ``completions`` artifact.

    Finished shards go to the stage's keyed ``.partial`` folder, so a killed stage resumes
    them; the sampler and stop strings come from the ``sample`` section, top-p/top-k too
    unless given (evaluation has its own). The manifest counts repeated prompts dropped on
    load and prompts/responses cut to the model's lengths (:mod:`iterdpo.truncation`).
    """
    from iterdpo import records, truncation
    from iterdpo.sampling import SamplingParams, get_sampler, postprocess

    s = call.cfg.sample
    top_p = s.top_p if top_p is None else top_p
    top_k = s.top_k if top_k is None else top_k
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed, stop=tuple(s.stop))
    sampler = get_sampler(s.backend)
    table = sampler(model, prompts, params, call.partial(), model_cfg=call.cfg.model, batch_size=s.batch_size,
                    progress=call.stage.name, sample_cfg=s)
    table, extra = postprocess(table, empty=s.empty, duplicates=s.duplicates)
    call.write("completions", table)
    stops = sum(f == "stop" for f in table.column("finish_reason").to_pylist())
    extra.update(records.prompt_stats(prompts), **truncation.completions_stats(table, model, call.cfg.model, call.where))
    return {"prompts": prompts.num_rows, "completions": table.num_rows, "stopped": stops, **extra}


def prompts_value(prompts) -> Value:
    """A prompt set as an input: keyed by its prompt ids."""
    return Value(hashlib.sha1("".join(prompts.column("prompt_id").to_pylist()).encode()).hexdigest(), prompts)


def _reads(run, k):
    return {"policy": policy_input(run, k - 1), "prompts": prompts_value(run.prompts_for(k))}


def _write(call: Call) -> dict:
    s, k = call.cfg.sample, call.k
    return generate(call, call.model("policy"), call.read("prompts"), n=s.n, temperature=s.temperature,
                    max_tokens=s.max_tokens, seed=call.seed(k, "sample"))


SAMPLE = Stage("sample", _write, writes=("completions",), fields=("sample", "model", "run.seed"), reads=_reads)

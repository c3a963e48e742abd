"""APL's select stage and pipeline (Muldrew et al., seed 002): one acquired pair per kept prompt.

``select.selector``: certainty (largest |r1 - r2| of each prompt's first two responses),
entropy (highest predictive entropy, then the first two responses), hybrid (entropy
keeps hybrid_fraction of the prompts, certainty corpus_fraction among them) or random.
The other stages are the default pipeline's.
"""

from __future__ import annotations

import math

from iterdpo.pipeline.engine import Call, Stage
from iterdpo.stages.default import DEFAULT
from iterdpo.stages.select import scored_input, selection_stats, selector_check

ACQUISITIONS = ("certainty", "entropy", "hybrid", "random")


def _write(call: Call) -> dict:
    import pyarrow as pa

    from iterdpo.selection import apl, stream
    from iterdpo.selection.margin import select_margin

    s = call.cfg.select
    scored = call.path("scored")
    prompts = stream.count_runs(scored, "prompt_id", str(scored))  # prompts are contiguous: runs = prompts
    count, seed = math.ceil(s.corpus_fraction * prompts), call.seed(call.k, "select")
    if s.selector == "certainty":
        table = apl.select_certainty(scored, count=count, margin=s.margin, seed=seed)
    elif s.selector == "hybrid":
        table = apl.select_hybrid(scored, scored, s=math.ceil(s.hybrid_fraction * prompts), m=count, per_token=s.entropy_per_token, margin=s.margin, seed=seed)
    elif s.selector == "entropy":  # the top prompts by entropy, each with its first two responses
        top = apl.select_entropy(scored, count=count, per_token=s.entropy_per_token, seed=seed)
        table = apl.select_certainty(scored, count=count, margin=s.margin, seed=seed, prompts=top.column("prompt_id"))
        name = f"apl:entropy/{'token' if s.entropy_per_token else 'sequence'}"
        table = table.set_column(table.schema.get_field_index("selector"), "selector", pa.repeat(pa.scalar(name, pa.string()), table.num_rows))
    elif s.selector == "random":
        table = select_margin(scored, instance="random", corpus="random", corpus_fraction=s.corpus_fraction, margin=s.margin, seed=seed)
    else:
        raise ValueError(f"select.selector {s.selector!r} is not an APL acquisition function; allowed: {', '.join(ACQUISITIONS)}")
    stream.write_parquet(table, call.tmp / "candidates.parquet")
    return selection_stats(call, table.column("margin").to_pylist())


SELECT = Stage("select", _write, writes=("candidates",), fields=("select", "run.seed"), reads=scored_input,
               check=selector_check(*ACQUISITIONS))

APL = {**DEFAULT, "select": SELECT}

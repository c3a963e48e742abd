"""select: candidate pairs by implicit reward margin, before any label is bought (CANDIDATES).

The default pipeline's selector is ``margin`` (Yang et al.): per prompt the pair with the
smallest (or largest, or a random) |r(a) - r(b)|, then a corpus_fraction of those pairs
across prompts. Other selectors are other select stages (:mod:`iterdpo.stages.apl`,
:mod:`iterdpo.stages.arm`, :mod:`iterdpo.stages.sera`).
"""

from __future__ import annotations

from iterdpo.pipeline.context import log
from iterdpo.pipeline.engine import Call, Ref, Stage


def selection_stats(call: Call, margins: list[float]) -> dict:
    """pairs and mean margin of a selection (``margins``: |r(a) - r(b)|); warns when every margin is 0.

    Every implicit reward margin is 0 when the scored policy is its own reference
    (iteration 1 with run.reference 'fixed' and model.reference 'fixed-initial', or 'previous'
    from pi_0): a margin-based choice is then a seeded random pick.
    """
    if margins and all(m == 0 for m in margins):
        log(f"warning: iter {call.k} {call.stage.name}: every implicit reward margin is 0 because the policy is its own "
            "reference (pi_{k-1} == reference; set model.reference to another model to avoid it), so selection here is "
            "a seeded random pick")
    return {"pairs": len(margins), "mean_abs_margin": sum(margins) / max(len(margins), 1)}


def selector_check(*allowed: str):
    """A config check: this select stage implements select.selector in ``allowed`` only."""

    def check(cfg) -> None:
        if cfg.select.selector not in allowed:
            from iterdpo.config import ConfigError

            raise ConfigError(f"select.selector {cfg.select.selector!r}: this pipeline's select stage implements "
                              f"{', '.join(allowed)}; use the pipeline for {cfg.select.selector!r} (iterdpo.stages.pipeline_for)")

    return check


def scored_input(run, k):
    return {"scored": Ref("score", k, "scored")}


def _write(call: Call) -> dict:
    from iterdpo.selection import stream
    from iterdpo.selection.margin import select_margin

    s = call.cfg.select
    # streamed batch by batch from scored.parquet (selection/stream.py)
    table = select_margin(call.path("scored"), instance=s.instance, corpus=s.corpus, corpus_fraction=s.corpus_fraction,
                          margin=s.margin, seed=call.seed(call.k, "select"))
    stream.write_parquet(table, call.tmp / "candidates.parquet")
    return selection_stats(call, table.column("margin").to_pylist())


SELECT = Stage("select", _write, writes=("candidates",), fields=("select", "run.seed"), reads=scored_input,
               check=selector_check("margin"))

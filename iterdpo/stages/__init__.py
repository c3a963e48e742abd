"""Pipeline stages, one module each, and the pipelines built from them.

==============  ==========================================================================
module          stages
==============  ==========================================================================
sample          sample (+ ``generate``, shared by every stage that samples)
score           score (all ranks)
select          select: margin selection (Yang et al.)
annotate        annotate (gold, reward_model, judge, implicit, human)
train           train (all ranks)
evaluate        eval_responses, baseline, evaluate
apl             APL's select (certainty, entropy, hybrid, random) and the APL pipeline
arm             ARM's select (active reward modelling in the loop) and the ARM pipeline
sera            SeRA's offline, bootstrap, sample, select, annotate and the SERA pipeline
active_rm       the rounds of recipes/active_rm.py
==============  ==========================================================================

A pipeline is a plain dict of stage names to :class:`iterdpo.pipeline.engine.Stage`; a new
one is a new module that copies a pipeline and swaps stages (see README, "Layout").
:data:`PIPELINES` names the shipped ones; :func:`pipeline_for` picks one from the config's
``select.selector`` (the name table :data:`iterdpo.registry.SELECTORS`).
"""

from __future__ import annotations

from iterdpo.registry import SELECTORS, load
from iterdpo.stages.active_rm import ACTIVE_RM
from iterdpo.stages.apl import APL
from iterdpo.stages.arm import ARM
from iterdpo.stages.default import DEFAULT
from iterdpo.stages.sera import SERA

__all__ = ["ACTIVE_RM", "APL", "ARM", "DEFAULT", "PIPELINES", "SERA", "pipeline_for"]

PIPELINES = {"iterative": DEFAULT, "apl": APL, "arm": ARM, "sera": SERA, "active_rm": ACTIVE_RM}



def pipeline_for(cfg) -> dict:
    """The pipeline ``iterdpo run`` uses for a config: the one :data:`iterdpo.registry.SELECTORS` names for its select.selector."""
    return load(SELECTORS, cfg.select.selector, "selector")

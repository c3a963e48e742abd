"""Selectors: scored completions -> pairs worth annotating (or training on).

Every selector is a plain function (the config's ``select.selector`` names pick a pipeline
whose select stage calls them: :data:`iterdpo.registry.SELECTORS`). Given the
same inputs and seed it returns the same selection whatever the input row order: rows
are put in a canonical order by their ids and ties are broken by a seeded hash of the
ids (:mod:`iterdpo.selection.base`). Given a :class:`pyarrow.Table` a selector computes in
memory; given a Parquet path or a record-batch reader the margin, APL and SeRA selectors
stream it batch by batch with the same result (:mod:`iterdpo.selection.stream`).

==================  ==========================================================  ======
name                what                                                        paper
==================  ==========================================================  ======
margin              instance + corpus level margin selection (SCORED -> CANDIDATES)  001
apl_certainty       largest ``|r1 - r2|`` pairs (SCORED -> CANDIDATES)             002
apl_entropy         highest predictive-entropy prompts (SCORED -> prompt scores)   002
apl_hybrid          entropy prompts, then certainty pairs                         002
sera                SeRA's D_t: offline selection + bootstrapping (-> SERA_PAIRS)  003
sera_offline        top-k1 offline pairs by oriented ensemble IRM                 003
sera_bootstrap      argmax/argmin pairs of policy samples, top-k2 prompts         003
arm                 active reward modelling strategies (-> CANDIDATES)            000
==================  ==========================================================  ======
"""

from __future__ import annotations

from iterdpo.selection.apl import select_certainty, select_entropy, select_hybrid
from iterdpo.selection.arm import select_arm
from iterdpo.selection.margin import select_margin
from iterdpo.selection.sera import select_bootstrap, select_offline, select_sera

__all__ = ["select_arm", "select_bootstrap", "select_certainty", "select_entropy", "select_hybrid", "select_margin",
           "select_offline", "select_sera"]

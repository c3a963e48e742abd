"""The default pipeline: iterative DPO with margin selection (Yang et al.) or plain iterative DPO.

Iteration k (1-based) with policy pi_{k-1} (pi_0 = the initial model)::

    sample    pi_{k-1} answers this iteration's prompts, N times each
    score     log-probs under pi_{k-1} and under pi_{k-1}'s reference -> implicit rewards
    select    candidate pairs by margin (before annotation)
    annotate  the annotator orients them
    train     pi_k = pi_{k-1} (or pi_0 with init=reset) trained on the pairs
    evaluate  pi_k against pi_0 on held-out prompts (with eval_responses and baseline)
"""

from __future__ import annotations

from iterdpo.stages.annotate import ANNOTATE
from iterdpo.stages.evaluate import BASELINE, EVAL_RESPONSES, EVALUATE
from iterdpo.stages.sample import SAMPLE
from iterdpo.stages.score import SCORE
from iterdpo.stages.select import SELECT
from iterdpo.stages.train import TRAIN

DEFAULT = {
    "sample": SAMPLE,
    "score": SCORE,
    "select": SELECT,
    "annotate": ANNOTATE,
    "train": TRAIN,
    "eval_responses": EVAL_RESPONSES,
    "baseline": BASELINE,
    "evaluate": EVALUATE,
}

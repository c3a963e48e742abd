"""Annotation: candidate pairs -> oriented preference pairs.

An annotator is anything with a ``name`` (stored as ``label_source``) and a batched
``compare(prompts, a, b) -> list[float | None]``: a positive value prefers ``a``, negative
prefers ``b``, 0 is a tie and ``None`` means no label could be had (the pair is dropped).
A reward model returns ``score(a) - score(b)``; a judge returns +1/-1.

:func:`annotate` orients pairs and attaches the log-probs training needs:

- ``ref_chosen_logps`` / ``ref_rejected_logps``: log-probs under the *training* reference:
  the scored ``ref_logp`` when the reference is fixed, the scored ``policy_logp`` when the
  reference is the previous iterate (it is the policy that was scored), NaN without one.
- ``policy_chosen_logps`` / ``policy_rejected_logps``: log-probs under the model training
  starts from, when scoring computed them (NaN otherwise); training checks its first
  forward against them.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

import pyarrow as pa

from iterdpo import records


class Annotator(Protocol):
    name: str

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]: ...


def get_annotator(name: str, **kwargs) -> Annotator:
    if name == "gold":
        from iterdpo.annotation.gold import GoldAnnotator

        return GoldAnnotator()
    raise ValueError(f"unknown annotator {name!r}; available: ['gold']")


def annotate(
    candidates: pa.Table,
    scored: pa.Table,
    annotator: Annotator,
    *,
    reference: str,
    init: str,
    ties: str,
    iteration: int,
    seed: int,
) -> tuple[pa.Table, dict]:
    """Label and orient candidate pairs; returns (PREFERENCES table, stats)."""
    by_id = records.rows_by(scored, "completion_id")
    cands = candidates.to_pylist()
    a = [by_id[c["a_id"]] for c in cands]
    b = [by_id[c["b_id"]] for c in cands]
    labels = annotator.compare([x["prompt"] for x in a], [x["completion"] for x in a], [x["completion"] for x in b])
    rng = random.Random(seed)
    out, dropped, tied = [], 0, 0
    for ra, rb, lab in zip(a, b, labels):
        if lab is None:
            dropped += 1
            continue
        if lab == 0:
            tied += 1
            if ties == "drop":
                continue
            lab = rng.choice([1, -1])
        w, l = (ra, rb) if lab > 0 else (rb, ra)
        ref_col = {"fixed": "ref_logp", "previous": "policy_logp"}.get(reference)
        # training starts from the scored policy when continuing, or from the initial
        # model when resetting, which is the scored reference only if that is fixed.
        start_col = "policy_logp" if init == "continue" else ("ref_logp" if reference == "fixed" else None)
        out.append(
            {
                "prompt_id": w["prompt_id"],
                "prompt": w["prompt"],
                "chosen": w["completion"],
                "rejected": l["completion"],
                "chosen_id": w["completion_id"],
                "rejected_id": l["completion_id"],
                "ref_chosen_logps": w[ref_col] if ref_col else math.nan,
                "ref_rejected_logps": l[ref_col] if ref_col else math.nan,
                "policy_chosen_logps": w[start_col] if start_col else math.nan,
                "policy_rejected_logps": l[start_col] if start_col else math.nan,
                "chosen_stopped": w["finish_reason"] == "stop",
                "rejected_stopped": l["finish_reason"] == "stop",
                "label_source": annotator.name,
                "iteration": iteration,
            }
        )
    stats = {"candidates": len(cands), "pairs": len(out), "ties": tied, "unlabelled": dropped}
    return records.from_rows(out, records.PREFERENCES), stats

"""Annotation: candidate pairs -> oriented preference pairs.

An annotator is anything with a ``name`` (stored as ``label_source``) and a batched
``compare(prompts, a, b) -> list[float | None]``: a positive value prefers ``a``, negative
prefers ``b``, 0 is a tie and ``None`` means no label could be had (the pair is dropped).
A reward model returns ``score(a) - score(b)``; a judge returns +1/-1.

Annotators that need more than text (the implicit reward of the scored rows, a human
label file keyed by completion ids) define ``compare_rows(a_rows, b_rows)`` instead, taking
the SCORED rows of both sides; annotators with counters (a judge's tokens and cost) define
``stats()``, merged into the annotate manifest's stats.

Available: ``gold`` (a task's gold reward, ``annotate.gold``: toy, world or reviews), ``reward_model`` (:mod:`.reward_model`, or
a lexical linear model's folder, :mod:`.lexical`), ``judge``
(:mod:`.judge`), ``implicit`` (:mod:`.implicit`), ``human`` (:mod:`.human`). Label noise
(:mod:`.noise`) swaps a seeded fraction of the oriented pairs afterwards.

:func:`annotate` orients pairs (LABELLED rows); it knows nothing of training's reference.
The train stage attaches the log-probs training needs with :func:`attach_logps`, from the
columns the run decides (:meth:`iterdpo.pipeline.context.Run.training_columns`):

- ``ref_chosen_logps`` / ``ref_rejected_logps``: log-probs under the *training* reference;
- ``policy_chosen_logps`` / ``policy_rejected_logps``: log-probs under the model training
  starts from (training checks its first forward against them).
"""

from __future__ import annotations

import math
import random
from typing import Protocol

import pyarrow as pa

from iterdpo import records
from iterdpo.registry import ANNOTATORS, load


class Annotator(Protocol):
    name: str

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]: ...


def gold_annotator(cfg=None, **_) -> Annotator:
    from iterdpo.annotation.gold import GoldAnnotator

    return GoldAnnotator(getattr(cfg, "gold", None) or "toy")


def reward_model_annotator(cfg, **_) -> Annotator:
    from iterdpo.annotation.reward_model import RewardModelAnnotator

    if not cfg.reward_model:
        from iterdpo.config import ConfigError

        raise ConfigError("annotate.reward_model: set it to the reward model's folder for annotator 'reward_model'")
    from iterdpo.annotation.lexical import LexicalRewardAnnotator, is_lexical
    from iterdpo.real.reviews import resolve  # the 'reviews' shorthand

    path = resolve(cfg.reward_model, "reward_model")
    if is_lexical(path):  # a lexical reward model's folder (iterdpo.annotation.lexical), not a transformers one
        return LexicalRewardAnnotator(path)
    return RewardModelAnnotator(path, batch_tokens=cfg.rm_batch_tokens, max_length=cfg.rm_max_length,
                                dtype=cfg.rm_dtype)


def judge_annotator(cfg, *, run_dir=None, seed: int = 0, for_eval: bool = False, **_) -> Annotator:
    from pathlib import Path

    from iterdpo.annotation.judge import JudgeAnnotator

    cache = cfg.judge.cache
    if cache is None and run_dir is not None:
        cache = str(Path(run_dir) / "judge_cache.sqlite")
    cache = None if cache in (None, "none") else cache
    return JudgeAnnotator(cfg.judge, cache_path=cache, seed=seed, on_unparseable="coin" if for_eval else "drop",
                          max_failed=getattr(cfg, "max_unlabelled", 0))


def implicit_annotator(cfg, **_) -> Annotator:
    from iterdpo.annotation.implicit import ImplicitAnnotator

    return ImplicitAnnotator(cfg.implicit_column)


def human_annotator(cfg, *, run_dir=None, iteration: int | None = None, **_) -> Annotator:
    from iterdpo.annotation.human import HumanAnnotator, labels_path

    if run_dir is None or iteration is None:
        from iterdpo.config import ConfigError

        raise ConfigError("annotator 'human' needs the run directory and the iteration")
    return HumanAnnotator(labels_path(run_dir, iteration))


def get_annotator(name: str, cfg=None, *, run_dir=None, iteration: int | None = None, seed: int = 0,
                  for_eval: bool = False) -> Annotator:
    """Build the annotator ``name`` (:data:`iterdpo.registry.ANNOTATORS`) from an :class:`iterdpo.config.AnnotateConfig`.

    ``run_dir`` locates the judge cache (``<run_dir>/judge_cache.sqlite`` by default) and
    the human label files (``<run_dir>/iter_<k>/human_labels.jsonl``). ``for_eval`` makes
    a judge flip a seeded coin on an unparseable answer instead of dropping the pair.
    """
    from iterdpo.config import ConfigError

    try:
        build = load(ANNOTATORS, name, "annotator")
    except ValueError as e:
        raise ConfigError(f"annotate.annotator: {e}") from None
    if cfg is None and name != "gold":
        raise ConfigError(f"annotator {name!r} needs the annotate config section")
    return build(cfg, run_dir=run_dir, iteration=iteration, seed=seed, for_eval=for_eval)


def labelled_rows(oriented: list[tuple[dict, dict, str]], *, iteration: int) -> list[dict]:
    """LABELLED rows from (chosen, rejected, label_source) triples of SCORED rows."""
    return [
        {
            "prompt_id": w["prompt_id"],
            "prompt": w["prompt"],
            "chosen": w["completion"],
            "rejected": lose["completion"],
            "chosen_id": w["completion_id"],
            "rejected_id": lose["completion_id"],
            "chosen_stopped": w["finish_reason"] == "stop",
            "rejected_stopped": lose["finish_reason"] == "stop",
            "label_source": source,
            "iteration": iteration,
        }
        for w, lose, source in oriented
    ]


def attach_logps(labelled: pa.Table, scored: pa.Table, *, ref_column: str | None, start_column: str | None) -> pa.Table:
    """PREFERENCES: LABELLED pairs with the log-probs training needs, taken from SCORED rows.

    ``ref_column`` holds the log-probs of training's reference, ``start_column`` those of
    the model training starts from (columns of ``scored``; None: NaN). Which columns those
    are is the run's decision (:meth:`iterdpo.pipeline.context.Run.training_columns`).
    """
    by_id = records.rows_by(scored, "completion_id")
    rows = []
    for p in labelled.to_pylist():
        w, lose = by_id[p["chosen_id"]], by_id[p["rejected_id"]]
        rows.append({
            **p,
            "ref_chosen_logps": w[ref_column] if ref_column else math.nan,
            "ref_rejected_logps": lose[ref_column] if ref_column else math.nan,
            "policy_chosen_logps": w[start_column] if start_column else math.nan,
            "policy_rejected_logps": lose[start_column] if start_column else math.nan,
        })
    return records.from_rows(rows, records.PREFERENCES)


def annotate(
    candidates: pa.Table,
    scored: pa.Table,
    annotator: Annotator,
    *,
    ties: str,
    iteration: int,
    seed: int,
    tie_threshold: float = 0.0,
    noise: float = 0.0,
) -> tuple[pa.Table, dict]:
    """Label and orient candidate pairs; returns (LABELLED table, stats).

    A label with ``|label| <= tie_threshold`` is a tie (dropped, or oriented by a seeded
    coin with ``ties='random'``). With ``noise > 0`` a seeded ``round(noise * pairs)`` of
    the oriented pairs get chosen and rejected swapped (:func:`iterdpo.annotation.noise.swap_indices`).
    """
    from iterdpo.annotation.noise import swap_indices

    by_id = records.rows_by(scored, "completion_id")
    cands = candidates.to_pylist()
    a = [by_id[c["a_id"]] for c in cands]
    b = [by_id[c["b_id"]] for c in cands]
    if hasattr(annotator, "compare_rows"):
        labels = annotator.compare_rows(a, b)
    else:
        labels = annotator.compare([x["prompt"] for x in a], [x["completion"] for x in a], [x["completion"] for x in b])
    if len(labels) != len(cands):
        raise RuntimeError(f"annotator {annotator.name!r} returned {len(labels)} labels for {len(cands)} pairs")
    rng = random.Random(seed)
    oriented, dropped, tied = [], 0, 0
    for ra, rb, lab in zip(a, b, labels, strict=True):
        if lab is None or (isinstance(lab, float) and math.isnan(lab)):
            dropped += 1
            continue
        if abs(lab) <= tie_threshold:
            tied += 1
            if ties == "drop":
                continue
            lab = rng.choice([1, -1])
        oriented.append((ra, rb) if lab > 0 else (rb, ra))
    swapped = swap_indices(len(oriented), noise, seed)
    for i in swapped:
        oriented[i] = oriented[i][::-1]
    out = labelled_rows([(w, lose, annotator.name) for w, lose in oriented], iteration=iteration)
    stats = {"candidates": len(cands), "pairs": len(out), "ties": tied, "unlabelled": dropped}
    if noise > 0:
        # which pairs carry a wrong label: lets an analysis ask whether selection filters them out
        stats.update(noise_fraction=noise, noise_swapped=len(swapped),
                     noise_swapped_pairs=[[out[i]["chosen_id"], out[i]["rejected_id"]] for i in swapped])
    if hasattr(annotator, "stats"):
        stats["annotator"] = annotator.stats()
        if "failed" in stats["annotator"]:  # a judge: which unlabelled pairs a rerun could still label
            stats["unlabelled_failed"] = stats["annotator"]["failed"]
            stats["unlabelled_unparseable"] = stats["annotator"]["unparseable"]
    return records.from_rows(out, records.LABELLED), stats

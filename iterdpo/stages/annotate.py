"""annotate: the annotator orients the selected pairs (LABELLED); only these labels are bought.

The annotate stage knows nothing of training's reference: the train stage attaches the
reference and start log-probs (:meth:`iterdpo.pipeline.context.Run.training_columns`).
With ``annotate.annotator: human`` the stage stops for people: it writes the pairs to
``iter_<k>/human_request.jsonl`` and resumes once their labels are imported; the labels
file is an input, so new labels give a new key.
"""

from __future__ import annotations

import json

from iterdpo.pipeline.engine import Call, Ref, Stage, Value


def _labels(run, k):
    from iterdpo.annotation.human import labels_path

    return labels_path(run.rd.root, k)


def _reads(run, k):
    inputs = {"candidates": Ref("select", k, "candidates"), "scored": Ref("score", k, "scored")}
    if run.cfg.annotate.annotator == "human":
        from iterdpo.annotation.human import file_digest

        labels = _labels(run, k)
        inputs["labels"] = Value(file_digest(labels) if labels.exists() else None)
    return inputs


def _prepare(run, k) -> None:
    """annotator 'human' without labels: hand people the pairs, stop until they are imported."""
    if run.cfg.annotate.annotator != "human" or _labels(run, k).exists():
        return
    from iterdpo import records
    from iterdpo.annotation.human import export_pairs
    from iterdpo.pipeline import artifacts

    request = run.rd.root / f"iter_{k}" / "human_request.jsonl"
    export_pairs(artifacts.read(run.rd.stage(k, "select"), "candidates"), artifacts.read(run.rd.stage(k, "score"), "scored"),
                 request, seed=run.cfg.run.seed + k)
    raise records.RecordError(
        f"iteration {k} waits for human labels: fill the 'label' column of {request} (A, B, tie or skip), "
        f"then `iterdpo annotate-import -k {k} --labels {request}` and `iterdpo run` again"
    )


def _write(call: Call) -> dict:
    from iterdpo.annotation import annotate as label
    from iterdpo.annotation import get_annotator

    a, k = call.cfg.annotate, call.k
    annotator = get_annotator(a.annotator, a, run_dir=call.run.rd.root, iteration=k, seed=call.seed("judge"))
    table, stats = label(call.read("candidates"), call.read("scored"), annotator, ties=a.ties, iteration=k,
                         seed=call.seed(k, "annotate"), tie_threshold=a.tie_threshold, noise=a.noise)
    getattr(annotator, "close", lambda: None)()  # a judge's HTTP client and cache file
    call.write("labelled", table)
    swapped = stats.pop("noise_swapped_pairs", None)  # a file, not the manifest: it grows with the pairs
    if swapped is not None:
        (call.tmp / "noise_swapped.json").write_text(json.dumps(swapped))
    return stats


ANNOTATE = Stage("annotate", _write, writes=("labelled",), fields=("annotate", "run.seed"), reads=_reads, prepare=_prepare)

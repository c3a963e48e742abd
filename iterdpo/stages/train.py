"""train: pi_k = pi_{k-1} (or pi_0 with run.init 'reset') trained on the labelled pairs.

Runs on every rank of a launch. The pairs trained on get the log-probs of training's
reference and start model attached from scoring (which columns: the run decides,
:meth:`iterdpo.pipeline.context.Run.training_columns`) and are kept as the stage's
``preferences`` artifact (train/pairs.parquet, TRL's column names), next to the model.
"""

from __future__ import annotations

from iterdpo import distributed as dist
from iterdpo.pipeline.engine import Call, Model, Ref, Stage, policy_input, reference_input


def _iterations(run, k) -> list[int]:
    return list(range(1, k + 1)) if run.cfg.run.init == "reset" else [k]


def _reads(run, k):
    inputs = {}
    for i in _iterations(run, k):
        inputs[f"labelled_{i}"] = Ref("annotate", i, "labelled")
        inputs[f"scored_{i}"] = Ref("score", i, "scored")
    inputs["start"] = Model(run.initial_model()) if run.cfg.run.init == "reset" else policy_input(run, k - 1)
    inputs["reference"] = reference_input(run, k)
    return inputs


def training_pairs(call: Call):
    """PREFERENCES of every iteration this training uses, with reference and start log-probs."""
    import pyarrow as pa

    from iterdpo.annotation import attach_logps

    ref_column, start_column = call.run.training_columns()
    return pa.concat_tables([
        attach_logps(call.read(f"labelled_{i}"), call.read(f"scored_{i}"), ref_column=ref_column, start_column=start_column)
        for i in _iterations(call.run, call.k)
    ])


def _write(call: Call) -> dict:
    from iterdpo import truncation
    from iterdpo.training.trainer import train as fit

    cfg, k = call.cfg, call.k
    pairs = training_pairs(call)
    if pairs.num_rows == 0:
        raise RuntimeError(f"iteration {k}: no preference pairs to train on (all dropped by annotation)")
    if dist.is_main():
        call.write("preferences", pairs)
    cut = truncation.pairs_stats(pairs, call.model("start"), cfg.model, call.where)
    stats = fit(pairs, call.model("start"), call.tmp, tokenizer_path=cfg.model.tokenizer, model_cfg=cfg.model, cfg=cfg.train,
                seed=call.seed(k, "train"), ckpt_dir=call.partial())
    return {**stats, **cut}


TRAIN = Stage("train", _write, writes=("model", "preferences"), reads=_reads, all_ranks=True,
              fields=("train", "model", "run.seed", "run.init", "run.reference"))

"""Our trainer against TRL 1.16 ``DPOTrainer`` on the same tiny model, data and hyper-parameters.

One global batch holds every pair, so both trainers see the same batch at every step
(TRL's shuffling cannot change a mean). TRL runs a live reference model; we use the
reference log-probs stored beforehand. Loss mapping: ``sigmoid`` = dpo, ``ipo`` = ipo with
``ipo_per_token=True`` (TRL divides each log-ratio by the completion length), ``hinge`` =
slic with delta 1, ``robust`` = rdpo. Tolerance: 1e-4 absolute on the loss at every one of
4 steps (observed: at most 1.4e-6 for IPO, whose loss is ~25, and < 1e-7 for the others;
float32 sums in a different order).
"""

from __future__ import annotations

import pytest

from iterdpo.config import load_config
from iterdpo.training.trainer import train

STEPS, N, LR = 4, 8, 5e-3
CASES = [("dpo", "sigmoid", {}), ("ipo", "ipo", {"ipo_per_token": True}), ("slic", "hinge", {}),
         ("rdpo", "robust", {"label_smoothing": 0.1})]


@pytest.fixture(scope="module")
def parity_pairs(tiny_model_dir):
    from conftest import make_pairs  # tests/training/conftest.py

    return make_pairs(tiny_model_dir, N, seed=3, unstopped_every=0)  # TRL's chat template always closes with EOS


def trl_losses(model_dir, pairs, loss_type, beta, label_smoothing, out):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = pairs.to_pylist()
    ds = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows
    ])
    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=N, num_train_epochs=STEPS, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=beta,
        loss_type=loss_type, label_smoothing=label_smoothing, use_cpu=True, bf16=False,
        gradient_checkpointing=False, max_length=256, logging_steps=1, report_to=[], save_strategy="no",
        seed=0, disable_tqdm=True,
    )
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=ds, processing_class=tok)
    # the same tokens as our routine: prompt under the chat template, response + EOS
    from iterdpo.logprobs import encode

    ex = trainer.train_dataset[0]
    ours = encode(tok, rows[0]["prompt"], rows[0]["chosen"], stopped=True, max_prompt_length=128, max_length=256)
    assert ex["prompt_ids"] + ex["chosen_ids"] == ours.input_ids
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize(("ours", "theirs", "extra"), CASES, ids=[c[1] for c in CASES])
def test_losses_match_trl(ours, theirs, extra, tiny_model_dir, parity_pairs, tmp_path):
    beta = 0.1
    cfg = load_config(None, [f"train.loss={ours}", f"train.beta={beta}", f"train.batch_size={N}", f"train.epochs={STEPS}",
                             f"train.learning_rate={LR}", "train.warmup_ratio=0", "train.weight_decay=0",
                             *(f"train.{k}={v}" for k, v in extra.items())])
    hist: list[float] = []
    train(parity_pairs, str(tiny_model_dir), tmp_path / "ours", tokenizer_path=None, model_cfg=cfg.model, cfg=cfg.train,
          seed=0, progress=None, history=hist)
    ref = trl_losses(tiny_model_dir, parity_pairs, theirs, beta, extra.get("label_smoothing", 0.0), tmp_path / "trl")
    assert len(hist) == len(ref) == STEPS
    assert hist == pytest.approx(ref, abs=1e-4)
    assert abs(hist[-1] - hist[0]) > 1e-3  # the comparison covers training, not only the first step

"""Preference training on accelerate, with stored reference log-probs and no reference model.

Inputs are PREFERENCES rows; the reference log-probs come from the scoring stage, so only
the policy is in memory. Before the first optimiser step the policy's log-probs of the
first batch are compared with the log-probs scoring stored for the same model
(``policy_*_logps``): a difference means scoring and training tokenised differently, and
training stops rather than optimise against wrong references.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pyarrow as pa


class TokenisationMismatch(RuntimeError):
    pass


def train(
    pairs: pa.Table,
    start_path: str,
    dest: Path,
    *,
    tokenizer_path: str | None,
    model_cfg,
    cfg,
    seed: int,
    progress: str | None = "train",
) -> dict:
    """Train ``start_path`` on ``pairs`` with ``cfg.loss``; save to ``dest/model``; return metrics."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from iterdpo.logprobs import collate, encode, sequence_logps
    from iterdpo.training.losses import LOSSES, implicit_margin

    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available())
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or start_path)
    model = AutoModelForCausalLM.from_pretrained(start_path, dtype=getattr(torch, model_cfg.dtype))
    spec = LOSSES[cfg.loss]
    opts = dict(
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        ipo_per_token=cfg.ipo_per_token,
        slic_delta=cfg.slic_delta,
        simpo_gamma=cfg.simpo_gamma,
    )

    rows = pairs.to_pylist()
    kw = dict(max_prompt_length=model_cfg.max_prompt_length, max_length=model_cfg.max_length)
    enc_c = [encode(tokenizer, r["prompt"], r["chosen"], stopped=r["chosen_stopped"], **kw) for r in rows]
    enc_r = [encode(tokenizer, r["prompt"], r["rejected"], stopped=r["rejected_stopped"], **kw) for r in rows]
    # Rank r of W takes every W-th pair of a seeded shuffle, per epoch.
    steps_per_epoch = math.ceil(len(rows) / (cfg.batch_size * accelerator.num_processes))
    total_updates = max(1, math.ceil(steps_per_epoch * cfg.epochs / cfg.grad_accum))
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup_ratio * total_updates), total_updates)
    model, optim, sched = accelerator.prepare(model, optim, sched)
    model.train()

    def t(name, idx):
        return torch.tensor([rows[i][name] for i in idx], dtype=torch.float32, device=accelerator.device)

    losses, accs, checked = [], [], False
    bar = tqdm(total=steps_per_epoch * cfg.epochs, desc=progress, disable=progress is None or not accelerator.is_main_process)
    for epoch in range(cfg.epochs):
        order = list(range(len(rows)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        order = order[accelerator.process_index :: accelerator.num_processes]
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            if not idx:
                # an uneven last step: every rank must still take part in the collective ops
                idx = order[:1]
            batch = collate([enc_c[i] for i in idx] + [enc_r[i] for i in idx], tokenizer.pad_token_id, accelerator.device)
            with accelerator.accumulate(model):
                out = sequence_logps(model, batch)
                B = len(idx)
                pc, pr = out.logps[:B], out.logps[B:]
                lc, lr = out.num_tokens[:B].float(), out.num_tokens[B:].float()
                if not checked:
                    _check_start(pc, pr, t("policy_chosen_logps", idx), t("policy_rejected_logps", idx), cfg.check_tolerance)
                    checked = True
                rc, rr = t("ref_chosen_logps", idx), t("ref_rejected_logps", idx)
                loss = spec.fn(pc, pr, rc, rr, lc, lr, **opts).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optim.step()
                sched.step()
                optim.zero_grad()
            margin = implicit_margin(pc.detach(), pr.detach(), rc, rr, lc, lr, loss=cfg.loss, beta=cfg.beta)
            losses.append(float(accelerator.gather(loss.detach()[None]).mean()))
            accs.append(float(accelerator.gather((margin > 0).float().mean()[None]).mean()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model_dir = dest / "model"
        accelerator.unwrap_model(model).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    accelerator.wait_for_everyone()
    return {
        "pairs": len(rows),
        "steps": len(losses),
        "first_loss": losses[0] if losses else math.nan,
        "train_loss": sum(losses) / len(losses) if losses else math.nan,
        "last_loss": losses[-1] if losses else math.nan,
        "reward_accuracy": sum(accs) / len(accs) if accs else math.nan,
    }


def _check_start(pc, pr, stored_c, stored_r, tol: float) -> None:
    """Stop if the first forward disagrees with the log-probs scoring stored for this model."""
    import torch

    got = torch.cat([pc.detach(), pr.detach()])
    want = torch.cat([stored_c, stored_r])
    known = ~torch.isnan(want)
    if not known.any():
        return
    diff = (got[known] - want[known]).abs().max().item()
    if diff > tol:
        raise TokenisationMismatch(
            f"training's first forward differs from the scored log-probs by {diff:.4g} nats "
            f"(tolerance {tol}). Scoring and training must use the same model, tokenizer, chat "
            "template, max_length and max_prompt_length: check for a tokenizer or chat-template "
            "change between the scoring stage and training."
        )

"""Preference training on accelerate, with stored reference log-probs and no reference model.

Inputs are PREFERENCES rows; the reference log-probs come from the scoring stage, so only
the policy is in memory (one forward + backward per step instead of TRL's policy forward
+ backward + reference forward). The same :func:`iterdpo.logprobs.sequence_logps` that
scoring used computes the policy's log-probs, so before the first optimiser step they are
compared with the log-probs scoring stored for the same model (``policy_*_logps``): a
difference means scoring and training tokenised differently, and training stops rather
than optimise against wrong references. Row i may differ by
``train.check_tolerance + n_i * eps(dtype) / 128`` nats (n_i its response tokens, see
:func:`iterdpo.logprobs.check_tolerance`); both stages load the model through
:func:`iterdpo.logprobs.load_causal_lm`, whose attention kernel makes a row's log-prob
independent of the padding of its batch in bfloat16 too (the 0.86-nat gaps seen on
SmolLM2 in bf16 came from SDPA's CPU kernels, not from the tokenisation).

Batching. Every optimiser micro-step takes a *global batch* of ``batch_size * W`` pairs
(W processes); rank r takes its contiguous slice. With ``group_by_length`` the pairs of a
seeded shuffle are sorted by length inside windows of 16 global batches and the batches
of a window are shuffled again, so chosen and rejected of similar lengths share a padded
batch (small padding) while the order stays random. The per-rank loss is
``sum_i loss_i * W / n_global`` so that the gradient averaged over ranks is the mean over
the global batch whatever its split (an uneven last batch included).
A micro-step's sequences are packed end to end (:func:`iterdpo.logprobs.collate_packed`)
rather than padded, except the checked first micro-step in bfloat16/float16, which pads as
scoring pads: packing moves a low-precision log-prob past the start check's tolerance (the
rounding of the attention's sums over keys changes with a sequence's offset in its row), and
a gradient needs no bit-identity with scoring, only the check does.

Resume. Every ``checkpoint_every`` optimiser steps the model, optimiser, scheduler, RNG
states (``accelerator.save_state``, DeepSpeed-aware) and the step counter go to
``<ckpt_dir>/ckpt``; a restarted stage loads them and skips the steps already taken, and
ends with the same weights as an uninterrupted run (the batch schedule is a pure function
of the seed and the epoch).

Outputs (in ``dest``): ``model/`` (plain transformers weights, LoRA merged in),
``adapter/`` (the LoRA adapter alone, when ``lora_r > 0``), and ``pair_margins.parquet``:
each pair's implicit reward margin under the final policy, with its final log-probs.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import pyarrow as pa

from iterdpo.errors import UserError

PAIR_MARGINS = pa.schema(
    [
        ("chosen_id", pa.string()),
        ("rejected_id", pa.string()),
        ("margin", pa.float64()),  # final implicit margin (beta*h, or SimPO's normalised one)
        ("policy_chosen_logps", pa.float64()),  # log pi_final(y_w|x), summed
        ("policy_rejected_logps", pa.float64()),
    ]
)

GROUP_WINDOW = 16  # global batches sorted together by length


class TokenisationMismatch(RuntimeError, UserError):
    pass


def batch_schedule(lengths: list[int], batch_size: int, world: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """Global batches of one epoch: lists of pair indices, ``batch_size * world`` each (the last may be short).

    A pure function of its arguments, which is what makes a resumed run repeat the
    interrupted one exactly.
    """
    order = list(range(len(lengths)))
    rng = random.Random(seed * 1000 + epoch)
    rng.shuffle(order)
    g = batch_size * world
    if not group_by_length:
        return [order[i : i + g] for i in range(0, len(order), g)]
    out = []
    for w in range(0, len(order), g * GROUP_WINDOW):
        window = sorted(order[w : w + g * GROUP_WINDOW], key=lambda i: lengths[i])
        batches = [window[i : i + g] for i in range(0, len(window), g)]
        rng.shuffle(batches)
        out.extend(batches)
    # the one short batch (if any) goes last, where it cannot upset accumulation counts
    out.sort(key=lambda b: len(b) < g)
    return out


def plan_epochs(tokenizer, rows: list[dict], model_cfg, cfg, world: int, seed: int):
    """What :func:`train` will run on ``rows`` (PREFERENCES rows): each pair's chosen and
    rejected :class:`~iterdpo.logprobs.Encoded` (scoring's tokenisation) and, per epoch, the
    global batches of pair indices (:func:`batch_schedule` over each pair's longer sequence)."""
    from iterdpo.logprobs import encode

    kw = dict(max_prompt_length=model_cfg.max_prompt_length, max_length=model_cfg.max_length)
    enc_c = [encode(tokenizer, r["prompt"], r["chosen"], stopped=r["chosen_stopped"], **kw) for r in rows]
    enc_r = [encode(tokenizer, r["prompt"], r["rejected"], stopped=r["rejected_stopped"], **kw) for r in rows]
    lengths = [max(len(a.input_ids), len(b.input_ids)) for a, b in zip(enc_c, enc_r, strict=True)]
    epochs = [batch_schedule(lengths, cfg.batch_size, world, seed, e, cfg.group_by_length) for e in range(cfg.epochs)]
    return enc_c, enc_r, epochs


def rank_slice(batch: list[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s share of a global batch (near-equal contiguous parts; may be empty)."""
    n = len(batch)
    lo = rank * n // world
    hi = (rank + 1) * n // world
    return batch[lo:hi]


def _lora_config(cfg):
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets if targets == "all-linear" else list(targets),
        task_type="CAUSAL_LM",
    )


def train(
    pairs: pa.Table,
    start_path: str,
    dest: Path,
    *,
    tokenizer_path: str | None,
    model_cfg,
    cfg,
    seed: int,
    ckpt_dir: Path | None = None,
    progress: str | None = "train",
    history: list[float] | None = None,
) -> dict:
    """Train ``start_path`` on ``pairs`` with ``cfg.loss``; save to ``dest``; return metrics.

    Run it on every rank of a launch; rank 0 writes ``dest``. ``ckpt_dir`` (kept across
    restarts, e.g. the stage's ``.partial`` folder) enables mid-epoch checkpoints.
    ``history``, if given, receives the mean loss of every micro-step as it is taken.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from iterdpo import distributed
    from iterdpo.logprobs import LOW_PRECISION, collate, collate_packed, load_causal_lm
    from iterdpo.training.losses import LOSSES

    dest = Path(dest)
    _return_large_frees_to_os(True)
    distributed.init()  # the right multi-process state on CPU (see iterdpo.distributed)
    # no cpu= flag: the launcher (use_cpu in the accelerate config) or the hardware decides
    # split_batches: the batch schedule below is already global (batch_size * W pairs a
    # micro-step) and total_updates counts global steps. Without it accelerate's prepared
    # scheduler steps W times per optimiser step (it assumes per-process dataloaders), so on W
    # processes the learning rate decayed W times too fast (found by the 2-node Slurm test,
    # tests/test_slurm_two_nodes.py). No dataloader is prepared, so nothing else changes.
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    W, R = accelerator.num_processes, accelerator.process_index
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or start_path)
    # the loader scoring uses: the same attention kernel, so the start check compares like with like
    model = load_causal_lm(start_path, model_cfg.dtype, accelerator.device, move=False)
    if cfg.lora_r > 0:
        from peft import get_peft_model

        model = get_peft_model(model, _lora_config(cfg))
    spec = LOSSES[cfg.loss]
    opts = dict(
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        ipo_per_token=cfg.ipo_per_token,
        slic_delta=cfg.slic_delta,
        simpo_gamma=cfg.simpo_gamma,
    )

    rows = pairs.to_pylist()
    if spec.needs_reference:
        for i, r in enumerate(rows):
            if r["ref_chosen_logps"] is None or r["ref_rejected_logps"] is None or math.isnan(r["ref_chosen_logps"]) or math.isnan(r["ref_rejected_logps"]):
                raise ValueError(
                    f"preference pairs, row {i} (chosen_id {r.get('chosen_id')}): field ref_chosen_logps/ref_rejected_logps "
                    f"is missing or NaN, but loss '{cfg.loss}' needs reference log-probs"
                )
    enc_c, enc_r, epochs = plan_epochs(tokenizer, rows, model_cfg, cfg, W, seed)
    micro_steps = sum(len(e) for e in epochs)
    total_updates = max(1, math.ceil(micro_steps / cfg.grad_accum))
    ds = accelerator.state.deepspeed_plugin
    if ds is not None:
        # no dataloader goes through prepare(), so DeepSpeed cannot infer its micro-batch size;
        # DeepSpeed clips gradients itself, with the config's norm
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
        if ds.deepspeed_config.get("gradient_clipping", "auto") == "auto":
            ds.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm
    params = [p for p in model.parameters() if p.requires_grad]
    # fused AdamW (one kernel per parameter, CPU and CUDA): the default foreach implementation
    # builds parameter-sized temporaries at every step, which set the training peak when
    # activations are small. TRL/transformers default to the same (optim="adamw_torch_fused").
    # Under DeepSpeed the engine owns the update (CPUAdam with offload), so keep the plain one.
    fused = ds is None and all(p.device.type in ("cpu", "cuda") for p in params)
    optim = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused or None)
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup_ratio * total_updates), total_updates)
    model, optim, sched = accelerator.prepare(model, optim, sched)
    model.train()

    # --- resume ----------------------------------------------------------------------
    done_steps, losses, accs = 0, [], []
    ckpt = _latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt / "state"))
        meta = json.loads((ckpt / "progress.json").read_text())
        done_steps, losses, accs = meta["micro_step"], meta["losses"], meta["accs"]
        if accelerator.is_main_process:
            print(f"[iterdpo] train: resumed from {ckpt} at micro-step {done_steps}/{micro_steps}", flush=True)

    def column(name, idx):  # [len(idx)] float32: a PREFERENCES column for these pairs
        return torch.tensor([rows[i][name] for i in idx], dtype=torch.float32, device=accelerator.device)

    from iterdpo.logprobs import attention_implementation, check_tolerance, sequence_logps
    from iterdpo.training.losses import implicit_margin

    # Packing moves each sequence to another offset of a longer row; in float32 that changes its
    # log-prob by ~1e-6 nats, in bfloat16 on SmolLM2 by 0.43-0.61 nats (the summation order over
    # keys shifts and the rounding flips propagate through 30 layers), past the start check, so
    # in low precision the checked micro-step pads as scoring does and only later ones pack.
    pad_checked_step = model_cfg.dtype in LOW_PRECISION
    # The loader's padding-invariant attention (eager for bf16 on CPU) matters only where
    # log-probs are compared with scoring's: the checked micro-step and the final margins. The
    # other micro-steps run SDPA, which keeps no [heads, T, T] probabilities per layer for the
    # backward (at SmolLM2's shape, a 408-token packed row: 600 vs 100 MiB of activations).
    eager_for_check = attention_implementation(model_cfg.dtype, accelerator.device.type) == "eager"

    def attention(name: str) -> None:  # the kernel of the model's next forwards
        if eager_for_check:
            accelerator.unwrap_model(model).set_attn_implementation(name)

    checked = done_steps > 0
    if checked:
        attention("sdpa")
    bar = tqdm(total=micro_steps, initial=done_steps, desc=progress, disable=progress is None or not accelerator.is_main_process)
    step = 0
    for sched_e in epochs:
        for gbatch in sched_e:
            step += 1
            if step <= done_steps:
                continue
            idx = rank_slice(gbatch, R, W)
            weight = 1.0
            if not idx:  # fewer pairs than ranks in the last batch: join the collectives with weight 0
                idx, weight = gbatch[:1], 0.0
            # packed, not padded (padding costs every layer's FLOPs and activations); see pad_checked_step
            collate_batch = collate if pad_checked_step and not checked else collate_packed
            batch = collate_batch([enc_c[i] for i in idx] + [enc_r[i] for i in idx], tokenizer.pad_token_id, accelerator.device)
            with accelerator.accumulate(model):
                out = sequence_logps(model, batch)  # chosen rows first, then rejected: [2B]
                B = len(idx)
                policy_chosen_logps, policy_rejected_logps = out.logps[:B], out.logps[B:]
                chosen_lengths, rejected_lengths = out.num_tokens[:B].float(), out.num_tokens[B:].float()
                if not checked:
                    _check_start(
                        out.logps, torch.cat([column("policy_chosen_logps", idx), column("policy_rejected_logps", idx)]),
                        check_tolerance(cfg.check_tolerance, model_cfg.dtype, out.num_tokens),
                    )
                    checked = True
                    attention("sdpa")  # this forward's graph is built; the next ones need no invariance
                # the loss's reference log-probs are exactly those scoring stored
                reference_chosen_logps, reference_rejected_logps = column("ref_chosen_logps", idx), column("ref_rejected_logps", idx)
                logps = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                         chosen_lengths, rejected_lengths)
                per_pair = spec.fn(*logps, **opts)
                loss = per_pair.sum() * (weight * W / len(gbatch))
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optim.step()
                sched.step()
                optim.zero_grad(set_to_none=True)  # frees the gradients until the next backward
            margin = implicit_margin(*(x.detach() for x in logps), loss=cfg.loss, beta=cfg.beta)
            stats = torch.stack([per_pair.detach().sum() * weight, (margin > 0).float().sum() * weight])
            stats = accelerator.reduce(stats, reduction="sum")
            losses.append(float(stats[0]) / len(gbatch))
            accs.append(float(stats[1]) / len(gbatch))
            if history is not None:
                history.append(losses[-1])
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if ckpt_dir is not None and cfg.checkpoint_every and step < micro_steps and step % (cfg.checkpoint_every * cfg.grad_accum) == 0:
                _save_checkpoint(accelerator, Path(ckpt_dir), {"micro_step": step, "losses": losses, "accs": accs})
    bar.close()
    if ds is not None:
        # The DeepSpeed plugin registers its config with transformers, and under ZeRO-3 every
        # later from_pretrained (this rank 0's copy in _save_model, the rank-0-only sampling
        # and evaluation stages, per-rank scoring) would run inside deepspeed.zero.Init, a
        # collective the other ranks never join: a hang. The engine no longer needs it.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()

    attention("eager")  # final margins as scoring would compute them
    margins = _final_margins(accelerator, model, tokenizer, rows, enc_c, enc_r, cfg, progress)
    _save_model(accelerator, model, tokenizer, start_path, dest, cfg, model_cfg)
    if accelerator.is_main_process:
        from iterdpo import records

        records.write_table(pa.Table.from_pylist(margins, schema=PAIR_MARGINS), dest / "pair_margins.parquet")
    accelerator.wait_for_everyone()
    _return_large_frees_to_os(False)
    m = [r["margin"] for r in margins]
    return {
        "pairs": len(rows),
        "steps": len(losses),
        "optimizer_steps": total_updates,
        "processes": W,
        "first_loss": losses[0] if losses else math.nan,
        "train_loss": sum(losses) / len(losses) if losses else math.nan,
        "last_loss": losses[-1] if losses else math.nan,
        "reward_accuracy": sum(accs) / len(accs) if accs else math.nan,
        "final_mean_margin": sum(m) / len(m) if m else math.nan,
        "final_margin_accuracy": sum(x > 0 for x in m) / len(m) if m else math.nan,
    }


def _return_large_frees_to_os(training: bool) -> None:
    """While ``training``, make glibc serve every allocation of 512 KiB or more with its own mmap
    (``M_MMAP_THRESHOLD``); after it, let the heap serve up to 32 MiB again.

    By default glibc raises that threshold to the size of each large block freed (up to
    32 MiB), after which activations and gradients of that size come from the heap and stay
    resident after they are freed: a training step's RSS then carries the previous step's
    freed tensors. Measured at SmolLM2's shape (``benchmarks/training_memory.py``, fp32, 2 pairs
    per step): peak RSS 3,682 MiB above the baseline by default, 3,139 MiB at a fixed 128 KiB.
    The price is a page fault per 4 KiB of every large tensor, each step again: at 128 KiB a
    third of a CPU training step was kernel time. 512 KiB keeps most of the saving for less of
    the cost (``benchmarks/training.py`` at SmolLM2's shape, fp32, 7 steps, mean s/step and peak
    MiB: 128 KiB 5.93 / 3,088; 512 KiB 5.46 / 3,211; 1 MiB 4.77 / 3,578; benchmarks/real_training.md).
    Process-wide, so the stages that follow in the same process are given back the heap: glibc
    cannot return to its adaptive mode, so ``training=False`` sets the ceiling that mode reaches
    (threshold 32 MiB, trim threshold 64 MiB). Sampling SmolLM2 with HF ``generate``
    (``benchmarks/generate_malloc.py``: 32 prompts x 2 x 48 tokens, fp32) took 45.5 s wall (28.9 s
    of it kernel time) at a fixed 128 KiB, 45.9 s at 512 KiB, 27.5 s with glibc's defaults and
    24.1 s (0.4 s kernel) at that ceiling. CUDA memory is not malloc'd;
    a no-op off glibc, or when ``MALLOC_MMAP_THRESHOLD_`` sets the threshold from outside.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if training:
            libc.mallopt(-3, 512 * 1024)  # M_MMAP_THRESHOLD (malloc.h): -3
            libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD (-1): glibc's default, as a later stage may have raised it
        else:
            libc.mallopt(-3, 32 * 1024 * 1024)
            libc.mallopt(-1, 64 * 1024 * 1024)  # M_TRIM_THRESHOLD: -1
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        pass


# --- checkpoints ---------------------------------------------------------------------


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    ckpt_dir = Path(ckpt_dir)
    for name in ("ckpt", "ckpt-old"):  # ckpt-old survives a kill between the two renames
        p = ckpt_dir / name
        if (p / "progress.json").exists():
            return p
    return None


def _save_checkpoint(accelerator, ckpt_dir: Path, meta: dict) -> None:
    """Write ``ckpt.tmp`` on every rank, then publish it as ``ckpt`` (rank 0 renames)."""
    tmp = ckpt_dir / "ckpt.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(meta))
        cur, old = ckpt_dir / "ckpt", ckpt_dir / "ckpt-old"
        if old.exists():
            shutil.rmtree(old)
        if cur.exists():
            os.replace(cur, old)
        os.replace(tmp, cur)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


# --- outputs -------------------------------------------------------------------------


def _final_margins(accelerator, model, tokenizer, rows, enc_c, enc_r, cfg, progress) -> list[dict]:
    """Every pair's final log-probs and implicit margin; ranks split the pairs, rank 0 gathers."""
    import torch

    from iterdpo.logprobs import collate, length_buckets, sequence_logps
    from iterdpo.training.losses import implicit_margin

    W, R = accelerator.num_processes, accelerator.process_index
    mine = list(range(R, len(rows), W))
    lengths = [len(enc_c[i].input_ids) + len(enc_r[i].input_ids) for i in mine]
    batches = [[mine[j] for j in b] for b in length_buckets(lengths, cfg.score_batch_tokens, max_batch=64)]
    # every rank runs as many forwards as the busiest one (ZeRO-3 gathers weights collectively)
    n_batches = int(accelerator.gather(torch.tensor([len(batches)], device=accelerator.device)).max())
    out_rows = []
    model.eval()
    with torch.no_grad():
        for b in range(n_batches):
            idx = batches[b] if b < len(batches) else [0]
            batch = collate([enc_c[i] for i in idx] + [enc_r[i] for i in idx], tokenizer.pad_token_id, accelerator.device)
            out = sequence_logps(model, batch)
            if b >= len(batches):
                continue
            B = len(idx)
            policy_chosen_logps, policy_rejected_logps = out.logps[:B], out.logps[B:]
            chosen_lengths, rejected_lengths = out.num_tokens[:B].float(), out.num_tokens[B:].float()
            device = policy_chosen_logps.device
            reference_chosen_logps = torch.tensor([rows[i]["ref_chosen_logps"] for i in idx], dtype=torch.float32, device=device)
            reference_rejected_logps = torch.tensor([rows[i]["ref_rejected_logps"] for i in idx], dtype=torch.float32, device=device)
            margin = implicit_margin(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                                     chosen_lengths, rejected_lengths, loss=cfg.loss, beta=cfg.beta)
            for j, i in enumerate(idx):
                out_rows.append((i, float(margin[j]), float(policy_chosen_logps[j]), float(policy_rejected_logps[j])))
    model.train()
    from accelerate.utils import gather_object

    gathered = gather_object(out_rows) if W > 1 else out_rows
    gathered = sorted(gathered)
    return [
        {
            "chosen_id": rows[i]["chosen_id"],
            "rejected_id": rows[i]["rejected_id"],
            "margin": margin,
            "policy_chosen_logps": policy_chosen_logps,
            "policy_rejected_logps": policy_rejected_logps,
        }
        for i, margin, policy_chosen_logps, policy_rejected_logps in gathered
    ]


def _save_model(accelerator, model, tokenizer, start_path: str, dest: Path, cfg, model_cfg) -> None:
    """``dest/model``: plain transformers weights (LoRA merged); ``dest/adapter`` with LoRA.

    The full state dict is gathered first (a collective under ZeRO-3), then rank 0 loads it
    into a fresh copy of the start model, so the same code serves DDP, ZeRO-2/3 and PEFT.
    """
    import torch
    from transformers import AutoModelForCausalLM

    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        fresh = AutoModelForCausalLM.from_pretrained(start_path, dtype=getattr(torch, model_cfg.dtype))
        if cfg.lora_r > 0:
            from peft import get_peft_model

            fresh = get_peft_model(fresh, _lora_config(cfg))
        missing, unexpected = fresh.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise RuntimeError(f"saving the trained model: state dict mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
        if cfg.lora_r > 0:
            fresh.save_pretrained(dest / "adapter")
            fresh = fresh.merge_and_unload()
        fresh.save_pretrained(dest / "model")
        tokenizer.save_pretrained(dest / "model")
    accelerator.wait_for_everyone()


def _check_start(policy_logps, stored_policy_logps, tolerance) -> None:
    """Stop if the first forward disagrees with the log-probs scoring stored for this model.

    ``policy_logps`` [N]: this forward's summed log-probs; ``stored_policy_logps`` [N]: the
    ``policy_*_logps`` scoring stored for the same rows (NaN: not known, skipped);
    ``tolerance`` [N]: per-row bound (:func:`iterdpo.logprobs.check_tolerance`).
    """
    import torch

    known = ~torch.isnan(stored_policy_logps)
    if not known.any():
        return
    diff = (policy_logps.detach() - stored_policy_logps)[known].abs()
    excess = diff - tolerance[known]
    worst = int(excess.argmax())
    if float(excess[worst]) > 0:
        raise TokenisationMismatch(
            f"training's first forward differs from the scored log-probs by {float(diff[worst]):.4g} nats "
            f"(tolerance {float(tolerance[known][worst]):.4g}). Scoring and training must use the same model, tokenizer, chat "
            "template, max_length and max_prompt_length: check for a tokenizer or chat-template "
            "change between the scoring stage and training."
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m iterdpo.training.trainer PAIRS START DEST [--ckpt-dir D] [section.key=value ...]``

    Trains on a preference-pair Parquet file outside the loop (same config sections);
    run it under ``accelerate launch`` for several processes.
    """
    import argparse

    from iterdpo import records
    from iterdpo.config import load_config

    p = argparse.ArgumentParser(prog="python -m iterdpo.training.trainer")
    p.add_argument("pairs")
    p.add_argument("start")
    p.add_argument("dest")
    p.add_argument("--ckpt-dir")
    p.add_argument("--config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*")
    a = p.parse_intermixed_args(argv)
    cfg = load_config(a.config, a.overrides)
    stats = train(
        records.read_table(Path(a.pairs)), a.start, Path(a.dest), tokenizer_path=cfg.model.tokenizer,
        model_cfg=cfg.model, cfg=cfg.train, seed=a.seed, ckpt_dir=Path(a.ckpt_dir) if a.ckpt_dir else None, progress=None,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

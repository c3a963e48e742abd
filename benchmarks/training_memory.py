"""Where a training step's CPU peak memory comes from: RSS sampled every millisecond per phase.

    python benchmarks/training_memory.py --workdir DIR [--batch-size 8] [--steps 3]
        [--logps lse|log_softmax] [--optim fused|foreach]

DIR is a ``benchmarks/training.py --workdir`` (its model and pairs.parquet). One process,
one thread; runs ``steps`` optimiser steps of iterdpo's DPO step (the same calls as
``iterdpo.training.trainer``: sequence_logps on chosen + rejected, the dpo loss, backward,
AdamW step, zero_grad) and prints, for the last step, the peak RSS of each phase above the
RSS before the model was loaded. ``--logps log_softmax`` swaps in the former per-token
routine (log_softmax over all positions, then gather); ``--optim foreach`` the default
multi-tensor AdamW instead of the fused one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Sampler(threading.Thread):
    """Max RSS per named phase, sampled every millisecond."""

    def __init__(self):
        super().__init__(daemon=True)
        self.phase, self.peaks, self.stop = "setup", {}, False

    def run(self):
        while not self.stop:
            r = rss_mb()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), r)
            time.sleep(0.001)


def old_logps(model, batch):
    """The routine before: log_softmax over [B, T-1, V] for every position, then gather."""
    import torch

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1)
    tl = torch.gather(lp, 2, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch["response_mask"][:, 1:]
    return tl.masked_fill(~mask, 0.0).sum(-1), mask.sum(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--logps", choices=["lse", "log_softmax"], default="lse")
    p.add_argument("--optim", choices=["fused", "foreach"], default="fused")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo import records
    from iterdpo.logprobs import collate, encode, sequence_logps
    from iterdpo.training.losses import LOSSES

    d = Path(a.workdir)
    s = Sampler()
    s.start()
    base = rss_mb()
    tok = AutoTokenizer.from_pretrained(d / "model")
    model = AutoModelForCausalLM.from_pretrained(d / "model")
    model.train()
    n_params = sum(x.numel() for x in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if a.optim == "fused" else {"foreach": True}))
    rows = records.read_table(d / "pairs.parquet").to_pylist()
    kw = dict(max_prompt_length=128, max_length=512)
    for step in range(a.steps):
        idx = range(step * a.batch_size, (step + 1) * a.batch_size)
        enc = [encode(tok, rows[i]["prompt"], rows[i][k], stopped=True, **kw) for k in ("chosen", "rejected") for i in idx]
        batch = collate(enc, tok.pad_token_id)
        s.phase = f"{step}:forward"
        if a.logps == "lse":
            o = sequence_logps(model, batch)
            lps, ntok = o.logps, o.num_tokens
        else:
            lps, ntok = old_logps(model, batch)
        B = a.batch_size
        z = torch.zeros(B)
        loss = LOSSES["dpo"].fn(lps[:B], lps[B:], z, z, ntok[:B].float(), ntok[B:].float(), beta=0.1, label_smoothing=0.0,
                                ipo_per_token=False, slic_delta=1.0, simpo_gamma=0.5).mean()
        s.phase = f"{step}:backward"
        loss.backward()
        s.phase = f"{step}:optimizer"
        opt.step()
        s.phase = f"{step}:zero_grad"
        opt.zero_grad(set_to_none=True)
        s.phase = f"{step}:done"
        time.sleep(0.01)
    s.stop = True
    s.join()
    T = batch["input_ids"].shape[1]
    print(json.dumps({
        "logps": a.logps, "optim": a.optim, "params": n_params, "vocab": model.config.vocab_size, "batch_seqs": 2 * a.batch_size,
        "last_batch_T": T, "weights_mb": n_params * 4 / 2**20,
        "logits_mb": 2 * a.batch_size * T * model.config.vocab_size * 4 / 2**20,
        "peak_above_base_mb": {k: round(v - base, 1) for k, v in s.peaks.items()},
        "overall_peak_above_base_mb": round(max(s.peaks.values()) - base, 1),
    }))


if __name__ == "__main__":
    main()

"""transformers ``generate`` sampler: batched, seeded per shard, the CPU default."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from iterdpo import records
from iterdpo.sampling import SamplingParams, shard_seed


def sample_hf(
    model_path: str,
    prompts: pa.Table,
    params: SamplingParams,
    shard_dir: Path,
    *,
    model_cfg,
    batch_size: int,
    progress: str | None = "sample",
) -> pa.Table:
    """N completions for each prompt; one Parquet shard per batch of prompts in ``shard_dir``."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.logprobs import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_cfg.tokenizer or model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, model_cfg.dtype))
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = prompts.to_pylist()
    shards = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    for s, batch in enumerate(tqdm(shards, desc=progress, disable=progress is None)):
        path = shard_dir / f"shard-{s:05d}.parquet"
        if path.exists():
            continue
        ids = [render_prompt(tokenizer, r["prompt"], model_cfg.max_prompt_length) for r in batch]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])  # left padding
        attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(x) for x in ids])[:, None]).long()
        torch.manual_seed(shard_seed(params.seed, s))
        greedy = params.temperature == 0
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attn,
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                top_p=None if greedy else params.top_p,
                top_k=None if greedy else (params.top_k or None),
                max_new_tokens=params.max_tokens,
                num_return_sequences=params.n,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        gen = out[:, width:].tolist()  # [B * n, <= max_tokens]; row b*n + k is sample k of prompt b
        out_rows = []
        for j, toks in enumerate(gen):
            r = batch[j // params.n]
            stop = eos in toks
            toks = toks[: toks.index(eos) + 1] if stop else toks
            text = tokenizer.decode(toks, skip_special_tokens=True)
            out_rows.append(
                {
                    "prompt_id": r["prompt_id"],
                    "completion_id": f"{r['prompt_id']}-{j % params.n:04d}",
                    "prompt": r["prompt"],
                    "completion": text,
                    "num_tokens": len(toks),
                    "finish_reason": "stop" if stop else "length",
                }
            )
        records.write_table(records.from_rows(out_rows, records.COMPLETIONS), path)
    return records.read_table(shard_dir) if any(shard_dir.glob("*.parquet")) else records.from_rows([], records.COMPLETIONS)

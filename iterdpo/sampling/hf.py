"""transformers ``generate`` sampler: batched, seeded per shard, the CPU default."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from iterdpo.sampling import (
    SamplingParams,
    collect,
    completion_row,
    pending_shards,
    retokenize_mismatch,
    shard_seed,
    write_shard,
)


def _cut_at_stop(tokenizer, toks: list[int], stop: tuple[str, ...]) -> tuple[list[int], str] | None:
    """(tokens up to the one completing the first stop string, text before it), or None."""
    for end in range(1, len(toks) + 1):
        text = tokenizer.decode(toks[:end], skip_special_tokens=True)
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return toks[:end], text[: min(hits)]
    return None


def sample_hf(
    model_path: str,
    prompts: pa.Table,
    params: SamplingParams,
    shard_dir: Path,
    *,
    model_cfg,
    batch_size: int,
    progress: str | None = "sample",
    sample_cfg=None,
) -> pa.Table:
    """N completions for each prompt; one Parquet shard per batch of prompts in ``shard_dir``."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo.logprobs import render_prompt

    rows = prompts.to_pylist()
    todo = pending_shards(len(rows), batch_size, shard_dir)
    if not todo:
        return collect(shard_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.tokenizer or model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, model_cfg.dtype))
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for s, start, end in tqdm(todo, desc=progress, disable=progress is None):
        batch = rows[start:end]
        ids = [render_prompt(tokenizer, r["prompt"], model_cfg.max_prompt_length) for r in batch]
        width = max(map(len, ids))
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])  # left padding
        attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(x) for x in ids])[:, None]).long()
        torch.manual_seed(shard_seed(params.seed, s))
        greedy = params.temperature == 0
        extra = {"stop_strings": list(params.stop), "tokenizer": tokenizer} if params.stop else {}
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attn,
                do_sample=not greedy,
                temperature=None if greedy else params.temperature,
                top_p=None if greedy else params.top_p,
                top_k=None if greedy else (params.top_k or None),
                max_new_tokens=params.max_tokens,
                num_return_sequences=1 if greedy else params.n,
                pad_token_id=pad,
                eos_token_id=eos,
                **extra,
            )
        if greedy:  # generate() refuses n > 1 without sampling; the n greedy samples are one, repeated (as vLLM returns them)
            out = out.repeat_interleave(params.n, dim=0)
        gen = out[:, width:].tolist()  # [B * n, <= max_tokens]; row b*n + k is sample k of prompt b
        out_rows, all_ids, mismatch = [], [], 0
        for j, toks in enumerate(gen):
            stop = eos in toks
            toks = toks[: toks.index(eos) + 1] if stop else toks
            text = tokenizer.decode(toks, skip_special_tokens=True)
            cut = None if stop or not params.stop else _cut_at_stop(tokenizer, toks, params.stop)
            if cut is not None:  # like vLLM: the stop string ends the response and is not kept
                toks, text, stop = cut[0], cut[1], True
            else:
                mismatch += retokenize_mismatch(tokenizer, ids[j // params.n], text, toks, model_cfg)
            out_rows.append(completion_row(batch[j // params.n], j % params.n, text, toks, "stop" if stop else "length"))
            all_ids.append(toks)
        write_shard(shard_dir, s, out_rows, {"retokenize_mismatch": mismatch}, all_ids)
    return collect(shard_dir)

"""Shared checks of sampler output (imported by the sampling tests)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from iterdpo import records
from iterdpo.config import ModelConfig
from iterdpo.logprobs import encode, render_prompt


def toy_prompts(toy_dir: Path, n: int):
    return records.load_prompts(toy_dir / "prompts_train.jsonl").slice(0, n)


def check_complete(table, prompts, n: int) -> None:
    """Every prompt has exactly n completions; no id twice; fields valid."""
    ids = table.column("completion_id").to_pylist()
    assert len(ids) == len(set(ids)) == prompts.num_rows * n
    per_prompt = Counter(table.column("prompt_id").to_pylist())
    assert set(per_prompt) == set(prompts.column("prompt_id").to_pylist())
    assert set(per_prompt.values()) == {n}
    assert set(table.column("finish_reason").to_pylist()) <= {"stop", "length"}


def sampled_ids(shard_dir: Path) -> dict[str, list[int]]:
    out = {}
    for f in sorted(Path(shard_dir).glob("ids-*.parquet")):
        t = pq.read_table(f)
        out.update(zip(t.column("completion_id").to_pylist(), t.column("token_ids").to_pylist(), strict=True))
    return out


def retokenize_report(tokenizer, table, shard_dir: Path, model_cfg: ModelConfig | None = None) -> dict:
    """Re-tokenise every completion with scoring's encode() and compare with the sampled ids.

    Returns counts: total, equal (encode gives the sampled ids), canonical (the sampled ids
    are what the tokenizer makes of their own decoded text), and the rows where equality
    and canonicity disagree (must be none: encode reproduces exactly the canonical samples).
    """
    model_cfg = model_cfg or ModelConfig()
    ids = sampled_ids(shard_dir)
    eos = tokenizer.eos_token_id
    total = equal = canonical = 0
    disagree = []
    for r in table.to_pylist():
        toks = ids[r["completion_id"]]
        assert r["num_tokens"] == len(toks)
        assert (r["finish_reason"] == "stop") == (toks[-1] == eos)
        p = render_prompt(tokenizer, r["prompt"], model_cfg.max_prompt_length)
        e = encode(tokenizer, r["prompt"], r["completion"], stopped=r["finish_reason"] == "stop",
                   max_prompt_length=model_cfg.max_prompt_length, max_length=model_cfg.max_length)
        assert e.input_ids[: e.prompt_len] == p
        same = e.input_ids[e.prompt_len :] == toks
        body = toks[:-1] if toks and toks[-1] == eos else toks
        canon = tokenizer(tokenizer.decode(body, skip_special_tokens=True), add_special_tokens=False)["input_ids"] == body
        total, equal, canonical = total + 1, equal + same, canonical + canon
        if same != canon:
            disagree.append(r["completion_id"])
    return {"total": total, "equal": equal, "canonical": canonical, "disagree": disagree}

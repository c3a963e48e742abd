"""What the length limits cut: counted for the stage manifests, said once per stage.

The one tokenisation routine (:func:`iterdpo.logprobs.encode`) keeps the last
``model.max_prompt_length`` tokens of a rendered prompt and cuts a response so that
prompt + response fit ``model.max_length``. Both are silent by design (a long prompt
must not stop a run), so the stages that read texts (sample, score, train) count here
what was cut, store the counts in their manifest and print one line when anything was:

    truncated_prompts     distinct prompts whose rendered ids exceed max_prompt_length
    truncated_responses   responses (completions; chosen and rejected for pairs) whose
                          prompt + response ids exceed max_length

It re-tokenises with the same routine, so the counts are those of scoring and training
exactly; the cost is one tokenizer pass over the texts (no model).
"""

from __future__ import annotations

import os


def _log(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[iterdpo] {msg}", flush=True)


def _tokenizer(tokenizer_path: str | None, model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_path or model_path)


def count(prompts: list[str], responses: list[tuple[str, str, bool]], tokenizer, max_prompt_length: int, max_length: int) -> dict:
    """Counts of cut prompts (distinct texts) and cut responses ``(prompt, response, stopped)``."""
    from iterdpo.logprobs import render_prompt

    kept: dict[str, int] = {}  # prompt -> kept prompt tokens
    cut_prompts = 0
    for p in dict.fromkeys(prompts):
        full = render_prompt(tokenizer, p, 1 << 30)
        kept[p] = min(len(full), max_prompt_length)
        cut_prompts += len(full) > max_prompt_length
    texts = [r for _, r, _ in responses]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    cut_responses = 0
    for (p, _, stopped), r in zip(responses, ids, strict=True):
        if p not in kept:
            kept[p] = min(len(render_prompt(tokenizer, p, 1 << 30)), max_prompt_length)
        cut_responses += kept[p] + len(r) + int(stopped) > max_length
    return {"truncated_prompts": cut_prompts, "truncated_responses": cut_responses}


def _say(where: str, stats: dict, prompts: int, responses: int, model_cfg) -> None:
    if stats["truncated_prompts"] or stats["truncated_responses"]:
        _log(
            f"{where}: {stats['truncated_prompts']} of {prompts} prompts longer than model.max_prompt_length="
            f"{model_cfg.max_prompt_length} tokens (their left end is cut), {stats['truncated_responses']} of {responses} "
            f"responses cut to fit model.max_length={model_cfg.max_length} (counted in the manifest)"
        )


def completions_stats(table, model_path: str, model_cfg, where: str) -> dict:
    """Counts for a COMPLETIONS (or SCORED) table: sample and score stages."""
    rows = table.select(["prompt", "completion", "finish_reason"]).to_pylist()
    tok = _tokenizer(model_cfg.tokenizer, model_path)
    prompts = [r["prompt"] for r in rows]
    stats = count(prompts, [(r["prompt"], r["completion"], r["finish_reason"] == "stop") for r in rows], tok,
                  model_cfg.max_prompt_length, model_cfg.max_length)
    _say(where, stats, len(set(prompts)), len(rows), model_cfg)
    return stats


def prompts_stats(table, model_path: str, model_cfg, where: str) -> dict:
    """Counts for a PROMPTS table about to be sampled (prompts only)."""
    prompts = table.column("prompt").to_pylist()
    stats = count(prompts, [], _tokenizer(model_cfg.tokenizer, model_path), model_cfg.max_prompt_length, model_cfg.max_length)
    _say(where, stats, len(set(prompts)), 0, model_cfg)
    return stats


def pairs_stats(table, model_path: str, model_cfg, where: str) -> dict:
    """Counts for a PREFERENCES table (train stage): both responses of every pair."""
    rows = table.select(["prompt", "chosen", "rejected", "chosen_stopped", "rejected_stopped"]).to_pylist()
    responses = [(r["prompt"], r[side], bool(r[f"{side}_stopped"])) for r in rows for side in ("chosen", "rejected")]
    prompts = [r["prompt"] for r in rows]
    stats = count(prompts, responses, _tokenizer(model_cfg.tokenizer, model_path), model_cfg.max_prompt_length, model_cfg.max_length)
    _say(where, stats, len(set(prompts)), len(responses), model_cfg)
    return stats

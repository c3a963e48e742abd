"""Truncation by the length limits is counted in the manifests and said once per stage."""

from __future__ import annotations

import json

from iterdpo.truncation import count


def test_counts_match_the_tokenisation_routine(tiny_model_dir):
    from transformers import AutoTokenizer

    from iterdpo.logprobs import encode, render_prompt

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_prompt = "good movie " * 50
    prompts = ["short one", long_prompt, long_prompt]
    responses = [("short one", "fine", True), ("short one", "word " * 100, False), (long_prompt, "ok", True)]
    got = count(prompts, responses, tok, max_prompt_length=16, max_length=40)
    assert got == {"truncated_prompts": 1, "truncated_responses": 1}
    # the same verdicts as the routine that scoring and training use
    assert len(render_prompt(tok, long_prompt, 1 << 30)) > 16
    e = encode(tok, "short one", "word " * 100, stopped=False, max_prompt_length=16, max_length=40)
    assert len(e.input_ids) == 40


def test_a_huge_prompt_is_counted_and_said_once(toy_cache, tmp_path, capsys):
    """Before: a 100k-character prompt was left-truncated to max_prompt_length and nothing said so."""
    from iterdpo.config import load_config
    from iterdpo.pipeline.driver import open_run, run_stage
    from iterdpo.stages import DEFAULT

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Write a review of a movie about the sea."}, {"prompt": "the film " * 12500},
            {"prompt": "Write a review of a movie about the sea."}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"data.prompts={prompts}", "data.prompts_per_iteration=2", "sample.n=2", "sample.max_tokens=4",
                             f"run.output_dir={tmp_path}"])
    stats = run_stage(open_run(cfg, DEFAULT), "sample", 1)["stats"]
    assert stats["truncated_prompts"] == 1 and stats["duplicate_prompts"] == 1
    out = capsys.readouterr().out
    said = [ln for ln in out.splitlines() if "longer than model.max_prompt_length" in ln]
    assert len(said) == 1 and said[0].startswith("[iterdpo] iter 1 sample: 1 of 2 prompts"), out

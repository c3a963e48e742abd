"""Preference pairs on the tiny model, with reference log-probs stored the way scoring stores them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest


def make_pairs(model_dir: Path, n: int, seed: int = 0, max_words: int = 12, unstopped_every: int = 5):
    """n pairs of random toy-vocabulary responses; ref = policy log-probs of ``model_dir`` (iteration 1)."""
    import math

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from iterdpo import records
    from iterdpo.logprobs import score_logps
    from iterdpo.toy import task

    rng = random.Random(seed)
    words = task.POSITIVE + task.NEGATIVE + task.NEUTRAL
    prompts = [p["prompt"] for p in task.all_prompts()]
    rows = []
    for i in range(n):
        p = rng.choice(prompts)
        c = " ".join(rng.choice(words) for _ in range(rng.randint(1, max_words)))
        r = " ".join(rng.choice(words) for _ in range(rng.randint(1, max_words)))
        rows.append({"prompt_id": f"p{i}", "prompt": p, "chosen": c, "rejected": r, "chosen_id": f"p{i}-c",
                     "rejected_id": f"p{i}-r", "chosen_stopped": True, "rejected_stopped": not (unstopped_every and i % unstopped_every == 0),
                     "label_source": "test", "iteration": 1})
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    kw = dict(max_prompt_length=128, max_length=256, batch_tokens=4096)
    lc, _ = score_logps(model, tok, [{"prompt": r["prompt"], "completion": r["chosen"], "finish_reason": "stop"} for r in rows], **kw)
    lr, _ = score_logps(model, tok, [{"prompt": r["prompt"], "completion": r["rejected"], "finish_reason": "stop" if r["rejected_stopped"] else "length"} for r in rows], **kw)
    for r, a, b in zip(rows, lc, lr, strict=True):
        r.update(ref_chosen_logps=a, ref_rejected_logps=b, policy_chosen_logps=a, policy_rejected_logps=b)
        assert not math.isnan(a)
    return records.from_rows(rows, records.PREFERENCES)


@pytest.fixture(scope="session")
def pairs_file(tiny_model_dir, tmp_path_factory) -> Path:
    from iterdpo import records

    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    records.write_table(make_pairs(tiny_model_dir, 96), path)
    return path

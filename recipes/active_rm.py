"""Active reward modelling (Shen, Sun, Ton, "Reviving the Classics: Active Reward Modeling
in Large Language Model Alignment", seed 000) on the toy task: which pairs should a
Bradley-Terry reward model ask labels for?

    python recipes/active_rm.py --config recipes/configs/toy/active_rm.yaml [section.key=value ...]
    python recipes/active_rm.py --config recipes/configs/toy/active_rm.yaml arm.strategy=random

Steps (settings in the config's ``arm:`` section, iterdpo.config.ArmConfig):

    sample    the SFT policy answers the pool prompts (data.prompts_per_iteration) and the
              held-out prompts (arm.test_prompts of data.eval_prompts) sample.n times each
    embed     e(x, y) for every response (arm.embedding: the SFT policy's mean last hidden
              state over the response tokens, or all-MiniLM-L6-v2), and its gold reward g
    round r   select_arm picks arm.batch candidate pairs (arm.strategy over an arm.pool
              pool) with the round r-1 reward model; the simulated annotator labels them,
              P(a > b) = sigmoid((g_a - g_b) / (std(g) * arm.temperature)); a fresh reward
              MLP r = w . phi(e) is trained on every label so far; on the held-out
              responses: 1 - Spearman(r, g) averaged over prompts (lower is better) and
              best-of-N, the mean gold reward of each prompt's top response by r.

Results: runs/<name>/arm_<strategy>_<pool>.json. Every step is a resumable stage of the
active_rm pipeline (iterdpo.stages.active_rm; runs/<name>/arm/<strategy>-<pool>/round_<r>/
holds the labels and the model), and
strategies share the sampled and embedded responses of one run directory, so comparing
strategies is one command per strategy with the same run name.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

import numpy as np  # noqa: E402

from iterdpo.config import ConfigError, load_config  # noqa: E402
from iterdpo.pipeline import artifacts  # noqa: E402
from iterdpo.pipeline.driver import close_run, run_stage, start_run  # noqa: E402
from iterdpo.stages.active_rm import ACTIVE_RM  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    # --- config: the YAML file, then section.key=value overrides --------------------
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. recipes/configs/toy/active_rm.yaml")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg.annotate.gold is None:
        raise ConfigError(f"{args.config}: the simulated annotator needs a task's gold reward: model.name_or_path 'toy' or 'world', "
                          "or annotate.gold set for a model given by path")
    a = cfg.arm

    run, _ = start_run(cfg, ACTIVE_RM, track=False)  # the active_rm pipeline (iterdpo.stages.active_rm); lock; config.yaml
    print(f"[recipe] active reward modelling: {a.rounds} rounds x {a.batch} labels, strategy={a.strategy} pool={a.pool} "
          f"(size {a.pool_size}), {cfg.prompts_for(1)} pool prompts x N={cfg.sample.n}, {a.test_prompts} held-out prompts", flush=True)

    # --- responses and embeddings (shared by every strategy of this run) -------------
    start = time.time()
    try:
        run_stage(run, "sample", 1)  # the SFT policy answers the pool prompts N times
        run_stage(run, "arm_embed", None)  # + the held-out answers; gold rewards and embeddings of both

        # --- the annotation rounds -------------------------------------------------------
        curve = [run_stage(run, "arm_round", r)["stats"] for r in range(1, a.rounds + 1)]
    finally:
        close_run(run)  # the run lock

    # --- results: the curve, next to what a perfect and a random ranker would score -------
    test = artifacts.read(run.rd.stage(None, "arm/embed"), "arm_test")
    by_prompt: dict[str, list[float]] = {}
    for p, g in zip(test.column("prompt_id").to_pylist(), test.column("gold").to_pylist(), strict=True):
        by_prompt.setdefault(p, []).append(g)
    result = {
        "run": cfg.run.name, "strategy": a.strategy, "pool": a.pool, "pool_size": a.pool_size, "batch": a.batch,
        "embedding": a.embedding, "seed": cfg.run.seed, "rounds": curve,
        "oracle_best_of_n": float(np.mean([max(v) for v in by_prompt.values()])),
        "random_best_of_n": float(np.mean([np.mean(v) for v in by_prompt.values()])),
    }
    path = run.rd.root / f"arm_{a.strategy}_{a.pool}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"[recipe] {a.rounds} round(s) in {time.time() - start:.1f} s -> {path}")
    print(f"{'round':>5} {'labels':>7} {'1-spearman':>11} {'best_of_n':>10}   (oracle {result['oracle_best_of_n']:.3f}, random {result['random_best_of_n']:.3f})")
    for c in curve:
        print(f"{c['round']:>5} {c['labels']:>7} {c['one_minus_spearman']:>11.4f} {c['best_of_n']:>10.4f}")
    return result


if __name__ == "__main__":
    from iterdpo.errors import run_main  # one line on stderr and exit 2 for anticipated errors

    sys.exit(run_main(main))

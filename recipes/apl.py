"""Active preference learning (Muldrew et al., "Active Preference Learning for Large
Language Models", seed 002): spend a fixed label budget on the most informative pairs.

    python recipes/apl.py --config recipes/configs/toy/apl.yaml [section.key=value ...]
    python recipes/apl.py --config recipes/configs/toy/apl.yaml select.selector=entropy sample.n=8 sample.temperature=1.0
    accelerate launch recipes/apl.py --config recipes/configs/gpt2-imdb/apl.yaml

Each acquisition step t = 1..T (run.iterations), with the current model theta_{t-1}:

    sample    theta_{t-1} completes S = data.prompts_per_iteration fresh prompts, n = sample.n
              times each (2 at T=0.7 for certainty; n=8 at T=1 for entropy / hybrid)
    score     implicit rewards r = beta * (log theta_{t-1}(y|x) - log theta_0(y|x)) and
              the sequence log-probs logp(y|x) entropy needs
    select    M = ceil(select.corpus_fraction * S) prompts, one pair each, by the acquisition
              function select.selector:
                certainty  largest |r(x,y1) - r(x,y2)|  (all 0 at t=1: a seeded random order)
                entropy    highest H(x) = -(1/n) sum_k logp(y^k|x), then the first two responses
                hybrid     top select.hybrid_fraction of prompts by entropy, then certainty
                random     a random pair of random prompts (the baseline)
    annotate  the oracle (annotate.annotator; gold on the toy task) labels the M pairs
    train     run.init=reset: theta_t = DPO from theta_0 on all pairs labelled so far (paper);
              run.init=continue: theta_t = DPO from theta_{t-1} on the new pairs ("online")
    evaluate  theta_t against theta_0 on held-out prompts (oracle win rate)

Our choice: entropy and hybrid build the pair from two of the same n samples the entropy
was estimated on (the paper draws a fresh T=0.7 pair), so one sampling pass serves both.

Every stage writes to runs/<name>/iter_<t>/<stage>/ and is skipped when already done, so
rerunning this script resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from iterdpo import distributed as dist  # noqa: E402
from iterdpo.config import ConfigError, load_config  # noqa: E402
from iterdpo.pipeline.driver import end_iteration, finish_run, run_stage, start_run  # noqa: E402
from iterdpo.stages.apl import ACQUISITIONS, APL  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    # --- config: the YAML file, then section.key=value overrides --------------------
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. recipes/configs/toy/apl.yaml")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg.select.selector not in ACQUISITIONS:
        raise ConfigError(f"{args.config}: select.selector: APL acquires with one of {ACQUISITIONS}, got {cfg.select.selector!r}")

    run, tracker = start_run(cfg, APL)  # the apl pipeline; lock; rank 0 writes the run's config; W&B when run.report_to is 'wandb'
    main_rank = dist.is_main()  # under `accelerate launch` rank 0 owns the run's files
    if main_rank:
        s = cfg.select
        print(
            f"[recipe] APL: {cfg.run.iterations} acquisition steps, S={cfg.prompts_for(1)} prompts x n={cfg.sample.n} "
            f"at T={cfg.sample.temperature}, acquisition={s.selector}, keep {s.corpus_fraction:g} of the prompts, "
            f"init={cfg.run.init}, loss={cfg.train.loss} beta={cfg.train.beta}",
            flush=True,
        )

    # --- the acquisition steps -----------------------------------------------------------
    start = time.time()
    for t in range(1, cfg.run.iterations + 1):
        run_stage(run, "sample", t)  # theta_{t-1} answers S fresh prompts n times
        run_stage(run, "score", t)  # implicit rewards and log-probs of every completion
        run_stage(run, "select", t)  # the acquisition function, before any label is bought
        run_stage(run, "annotate", t)  # oracle labels for the M acquired pairs only
        run_stage(run, "train", t)  # theta_t (from theta_0 on all labels with init=reset)
        run_stage(run, "evaluate", t)  # theta_t vs theta_0 on held-out prompts
        end_iteration(run, t, tracker)  # rank 0: summary.json and the tracker

    # --- summary -----------------------------------------------------------------------
    return finish_run(run, tracker, start)  # rank 0 prints the table


if __name__ == "__main__":
    from iterdpo.errors import run_main  # one line on stderr and exit 2 for anticipated errors

    sys.exit(run_main(main))

"""SeRA: self-reviewing and alignment with implicit reward margins (Ko et al., seed 003),
with any loss (dpo, ipo, slic, simpo, cdpo, rdpo).

    accelerate launch recipes/seraidpo.py --config recipes/configs/toy/seraidpo.yaml
    python recipes/seraidpo.py --config recipes/configs/toy/seraidpo.yaml [section.key=value ...]

An offline preference set D; pi_0 = the SFT model; reference = the previous iterate.

    iteration 1  train pi_1 on all of D (under pi_0 every implicit reward margin is 0)
    iteration t  score D's responses with the implicit reward of pi_{t-1}, ensembled with
                 pi_{t-2}'s:  R_t = (1 - lambda) IRM(pi_{t-1}) + lambda IRM(pi_{t-2});
                 keep the top k1 = 0.7|D| offline pairs by R_t (negative R_t: likely a
                 noisy label); sample N = 4 responses of pi_{t-1} per prompt of D and pair
                 argmax R_t with argmin R_t, keeping the top k2 = 0.3|D| prompts by that
                 margin (self-labelled); train pi_t from pi_{t-1} against pi_{t-1}
    every t      evaluate pi_t against pi_0 on held-out prompts

Every stage writes to runs/<name>/ and is skipped when done: rerunning resumes.
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
from iterdpo.stages.sera import SERA  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    # --- config: the YAML file, then section.key=value overrides --------------------
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. recipes/configs/toy/seraidpo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg.select.selector != "sera":
        raise ConfigError(f"{args.config}: select.selector must be 'sera' for this recipe (got {cfg.select.selector!r})")

    run, tracker = start_run(cfg, SERA)  # the sera pipeline; lock; rank 0 writes the run's config; W&B when run.report_to is 'wandb'
    main_rank = dist.is_main()  # under `accelerate launch` rank 0 owns the run's files
    if main_rank:
        s = cfg.sera
        print(
            f"[recipe] SeRA-{cfg.train.loss}: {cfg.run.iterations} iterations, offline={s.offline} "
            f"k1={s.k1_fraction}|D| k2={s.k2_fraction}|D| lambda={s.ensemble_lambda} N={cfg.sample.n} "
            f"beta={cfg.train.beta}",
            flush=True,
        )

    # --- the iterations ----------------------------------------------------------------
    # SERA (iterdpo.stages.sera) has its own sample, select and annotate stages; score and
    # train run on every process of a launch, the rest on rank 0.
    start = time.time()
    for k in range(1, cfg.run.iterations + 1):
        run_stage(run, "sample", k)  # D's responses (+ from k = 2: N samples of pi_{k-1} per D prompt)
        run_stage(run, "score", k)  # implicit rewards under pi_{k-1} (and pi_{k-2} for the ensemble)
        run_stage(run, "select", k)  # top-k1 offline pairs + top-k2 bootstrapped pairs (all of D at k = 1)
        run_stage(run, "annotate", k)  # offline labels kept; bootstrapped pairs labelled by R_t
        run_stage(run, "train", k)  # pi_k from pi_{k-1}, reference pi_{k-1}: its log-probs come from scoring
        run_stage(run, "evaluate", k)  # pi_k vs pi_0 on held-out prompts
        end_iteration(run, k, tracker)  # rank 0: summary.json and the tracker

    # --- summary -----------------------------------------------------------------------
    return finish_run(run, tracker, start)  # rank 0 prints the table


if __name__ == "__main__":
    from iterdpo.errors import run_main  # one line on stderr and exit 2 for anticipated errors

    sys.exit(run_main(main))

"""Iterative DPO with margin-based pair selection (Yang et al., "Not All Preference Pairs
Are Created Equal", seed 001), or plain iterative DPO (select.instance/corpus: random,
corpus_fraction: 1.0).

    accelerate launch recipes/iterative_dpo.py --config recipes/configs/toy/iterative_dpo.yaml
    python recipes/iterative_dpo.py --config recipes/configs/toy/iterative_dpo.yaml [section.key=value ...]

Each iteration k, with policy pi_{k-1} (pi_0 = the SFT model):

    sample    pi_{k-1} answers M_k new prompts N times each
    score     implicit rewards r(x, y) = beta * (log pi_{k-1}(y|x) - log ref(y|x))
    select    per prompt, the pair with the smallest |r(a) - r(b)| of its N(N-1)/2 pairs;
              across prompts, the smallest-margin corpus_fraction of those pairs
    annotate  the gold reward model labels the selected pairs (the only annotation spent)
    train     pi_k = DPO on the new pairs, reference = the SFT model
    evaluate  pi_k against pi_0 on held-out prompts (gold win rate)

Every stage writes to runs/<name>/iter_<k>/<stage>/ and is skipped when already done, so
rerunning this script (after a crash, or a requeued Slurm job) resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from iterdpo import distributed as dist  # noqa: E402
from iterdpo.config import load_config  # noqa: E402
from iterdpo.pipeline.driver import end_iteration, finish_run, run_stage, start_run  # noqa: E402
from iterdpo.stages.default import DEFAULT  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    # --- config: the YAML file, then section.key=value overrides --------------------
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. recipes/configs/toy/iterative_dpo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    run, tracker = start_run(cfg, DEFAULT)  # the default pipeline; lock; rank 0 writes the run's config; W&B when run.report_to is 'wandb'
    main_rank = dist.is_main()  # under `accelerate launch` rank 0 owns the run's files
    s = cfg.select
    if main_rank:
        print(
            f"[recipe] iterative DPO: {cfg.run.iterations} iterations, N={cfg.sample.n}, "
            f"select instance={s.instance} corpus={s.corpus} fraction={s.corpus_fraction}, "
            f"reference={cfg.run.reference}, loss={cfg.train.loss} beta={cfg.train.beta}",
            flush=True,
        )

    # --- the iterations ----------------------------------------------------------------
    # run_stage runs score and train on every process of a launch, the rest on rank 0.
    start = time.time()
    for k in range(1, cfg.run.iterations + 1):
        run_stage(run, "sample", k)  # pi_{k-1} answers this iteration's prompts N times
        run_stage(run, "score", k)  # implicit rewards of every completion
        run_stage(run, "select", k)  # margin selection, before any label is bought
        run_stage(run, "annotate", k)  # labels for the selected pairs only
        run_stage(run, "train", k)  # pi_k
        run_stage(run, "evaluate", k)  # pi_k vs pi_0 on held-out prompts
        end_iteration(run, k, tracker)  # rank 0: summary.json and the tracker

    # --- summary -----------------------------------------------------------------------
    return finish_run(run, tracker, start)  # rank 0 prints the table


if __name__ == "__main__":
    from iterdpo.errors import run_main  # one line on stderr and exit 2 for anticipated errors

    sys.exit(run_main(main))

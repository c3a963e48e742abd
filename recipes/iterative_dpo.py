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
from iterdpo import loop  # noqa: E402
from iterdpo.config import dump_config, load_config  # noqa: E402
from iterdpo.tracking import make_tracker  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    # --- config: the YAML file, then section.key=value overrides --------------------
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. recipes/configs/toy/iterative_dpo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    run = loop.Run(cfg)
    main_rank = dist.is_main()  # under `accelerate launch` rank 0 owns the run's files
    if main_rank:
        run.rd.root.mkdir(parents=True, exist_ok=True)
        (run.rd.root / "config.yaml").write_text(dump_config(cfg))
    tracker = make_tracker(run) if main_rank else None  # W&B when run.report_to is 'wandb'
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
        loop.run_stage(run, "sample", k)  # pi_{k-1} answers this iteration's prompts N times
        loop.run_stage(run, "score", k)  # implicit rewards of every completion
        loop.run_stage(run, "select", k)  # margin selection, before any label is bought
        loop.run_stage(run, "annotate", k)  # labels for the selected pairs only
        loop.run_stage(run, "train", k)  # pi_k
        loop.run_stage(run, "evaluate", k)  # pi_k vs pi_0 on held-out prompts
        if main_rank:
            loop.write_summary(run)
            tracker.log_iteration(run, k)
    if not main_rank:
        return loop.summarize(run)

    # --- summary -----------------------------------------------------------------------
    summary = loop.write_summary(run)
    tracker.finish(summary)
    print(f"[recipe] {cfg.run.iterations} iteration(s) in {time.time() - start:.1f} s -> {run.rd.root / 'summary.json'}")
    print(loop.format_table(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()

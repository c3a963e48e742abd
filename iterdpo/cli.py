"""``iterdpo`` command line. Heavy imports happen inside the commands, so ``--help`` is instant.

::

    iterdpo run [--config FILE] [section.key=value ...]           the whole loop (resumes)
    iterdpo sample|score|select|annotate|train|evaluate --iteration K [--config FILE] [overrides]
    iterdpo config [--config FILE] [overrides]                    print the resolved config
    iterdpo slurm submit CONFIG [overrides] [--iterations-as-jobs] [--nodes N] ...   submit to Slurm
    iterdpo annotate-export -k K --out FILE [--config FILE]       candidate pairs to .jsonl/.csv for people
    iterdpo annotate-import -k K --labels FILE [--config FILE]    their labels back (checked) for annotator 'human'
    iterdpo report RUN_DIR                                        RUN_DIR/report/index.html with plots
    iterdpo import-gguf FILE OUT                                  a llama-architecture GGUF -> a Hugging Face folder
"""

from __future__ import annotations

import argparse
import os
import sys

STAGES = ("sample", "score", "select", "annotate", "train", "evaluate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iterdpo",
        description="Iterative preference optimisation: sample -> score -> select -> annotate -> train, repeated.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks of anticipated errors too (or ITERDPO_DEBUG=1); "
                   "accepted anywhere on the command line")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="YAML config (default: the built-in toy task)")
        sp.add_argument("overrides", nargs="*", metavar="section.key=value", help="override any config field")

    common(sub.add_parser("run", help="run or resume every iteration of the loop"))
    for stage in STAGES:
        sp = sub.add_parser(stage, help=f"run the {stage} stage of one iteration (its inputs must exist)")
        sp.add_argument("--iteration", "-k", type=int, required=True, help="iteration number (1-based)")
        common(sp)
    common(sub.add_parser("config", help="print the resolved config (defaults + file + overrides)"))
    from iterdpo.slurm import add_parser as add_slurm  # argparse only; submitting is lazy

    add_slurm(sub)
    sp = sub.add_parser("annotate-export", help="write an iteration's candidate pairs to .jsonl/.csv for people to label")
    sp.add_argument("--iteration", "-k", type=int, required=True, help="iteration number (1-based)")
    sp.add_argument("--out", required=True, help="output file (.jsonl or .csv)")
    common(sp)
    sp = sub.add_parser("annotate-import", help="check and store people's labels for annotator 'human'")
    sp.add_argument("--iteration", "-k", type=int, required=True, help="iteration number (1-based)")
    sp.add_argument("--labels", required=True, help="the exported file with its label column filled (A, B, tie, skip)")
    common(sp)
    sp = sub.add_parser("report", help="write RUN_DIR/report/index.html (plots of every finished iteration)")
    sp.add_argument("run_dir", help="a run directory, e.g. runs/toy")
    sp = sub.add_parser("import-gguf", help="convert a llama-architecture GGUF file into a Hugging Face model folder")
    sp.add_argument("file", help="the .gguf file (needs the 'gguf' package)")
    sp.add_argument("out", help="output folder (safetensors, tokenizer, chat template)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line; an anticipated error prints one line and returns 2 (:func:`iterdpo.errors.run_main`)."""
    from iterdpo.errors import run_main

    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from iterdpo.config import dump_config, load_config

    if args.command == "slurm":
        from iterdpo.slurm import SlurmError
        from iterdpo.slurm import main as slurm_main

        try:
            return slurm_main(args)
        except SlurmError as e:
            print(f"iterdpo: error: {e}", file=sys.stderr)
            return 1
    if args.command == "import-gguf":
        from iterdpo.real.gguf import import_gguf

        stats = import_gguf(args.file, args.out)
        print(f"{args.out}: {stats['params']:,} parameters, vocabulary {stats['vocab']:,}, from {args.file}")
        return 0
    if args.command == "report":
        from iterdpo.report import write_report

        print(write_report(args.run_dir))
        return 0
    cfg = load_config(args.config, args.overrides)
    if args.command in ("annotate-export", "annotate-import"):
        return _human(args, cfg)
    if args.command == "config":
        print(dump_config(cfg), end="")
        return 0
    from iterdpo.pipeline import driver
    from iterdpo.pipeline.summary import write_summary
    from iterdpo.stages import pipeline_for

    if args.command == "run":
        driver.run_all(cfg, pipeline_for(cfg))
    else:  # one stage (and whatever it reads that has not run), under the run lock
        run, _ = driver.start_run(cfg, pipeline_for(cfg), track=False, stage=args.command)
        try:
            driver.run_stage(run, args.command, args.iteration)
            if int(os.environ.get("RANK", "0")) == 0:
                write_summary(run)
        finally:
            driver.close_run(run)
    return 0


def _human(args, cfg) -> int:
    from iterdpo import records
    from iterdpo.annotation import human
    from iterdpo.rundir import RunDir

    rd = RunDir(cfg.run_dir())
    select = rd.stage(args.iteration, "select")
    if rd.manifest(select) is None:
        raise records.RecordError(f"{select}: iteration {args.iteration} has no candidate pairs yet (run up to its select stage)")
    cands = records.read_table(select / "candidates.parquet")
    if args.command == "annotate-export":
        scored = records.read_table(rd.stage(args.iteration, "score") / "scored.parquet")
        n = human.export_pairs(cands, scored, args.out, seed=cfg.run.seed + args.iteration)
        print(f"wrote {n} pairs to {args.out}; fill the 'label' column with A, B, tie or skip, then run annotate-import")
    else:
        counts = human.import_labels(args.labels, cands, rd.root, args.iteration)
        print(f"imported {counts} -> {human.labels_path(rd.root, args.iteration)}; "
              "`iterdpo run` (with annotate.annotator=human) continues from the annotate stage")
    return 0


if __name__ == "__main__":
    sys.exit(main())

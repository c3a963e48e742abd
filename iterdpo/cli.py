"""``iterdpo`` command line. Heavy imports happen inside the commands, so ``--help`` is instant.

::

    iterdpo run [--config FILE] [section.key=value ...]           the whole loop (resumes)
    iterdpo sample|score|select|annotate|train|evaluate --iteration K [--config FILE] [overrides]
    iterdpo config [--config FILE] [overrides]                    print the resolved config
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from iterdpo.config import ConfigError, dump_config, load_config
    from iterdpo.records import RecordError
    from iterdpo.rundir import StageMismatch

    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "config":
            print(dump_config(cfg), end="")
            return 0
        from iterdpo import loop

        if args.command == "run":
            loop.run_all(cfg)
        else:
            run = loop.Run(cfg)
            run.rd.root.mkdir(parents=True, exist_ok=True)
            loop.run_stage(run, args.command, args.iteration)
            if int(os.environ.get("RANK", "0")) == 0:
                loop.write_summary(run)
    except (ConfigError, RecordError, StageMismatch) as e:
        print(f"iterdpo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

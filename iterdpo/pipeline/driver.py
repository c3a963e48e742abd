"""The driver: open a run (lock, key checks, config.yaml, tracker), run its iterations, finish it.

A recipe is::

    run, tracker = start_run(cfg, PIPELINE)
    for k in range(1, cfg.run.iterations + 1):
        for stage in ("sample", "score", "select", "annotate", "train", "evaluate"):
            run_stage(run, stage, k)
        end_iteration(run, k, tracker)
    finish_run(run, tracker, start)

or :func:`run_all` for exactly that.
"""

from __future__ import annotations

import time

from iterdpo import distributed as dist
from iterdpo.config import Config, dump_config
from iterdpo.pipeline.context import Run, log
from iterdpo.pipeline.engine import Pipeline, ensure, existing_key, stage_dir
from iterdpo.pipeline.lock import RunLock
from iterdpo.pipeline.summary import STAGES, format_table, summarize, write_summary
from iterdpo.tracking import make_tracker


def check_keys(run: Run) -> None:
    """Every finished stage of the run still matches the config (else StageMismatch), before any work.

    Run-level stages (k None) and those of iterations 1..run.iterations are checked.
    """
    seen = set()
    for k in (None, *range(1, run.cfg.run.iterations + 1)):
        for name in run.pipeline:
            path = stage_dir(run, run.pipeline, name, k)
            if path in seen or run.rd.manifest(path) is None:  # a run-level stage's folder ignores k: checked at k None
                continue
            seen.add(path)
            key = existing_key(run, run.pipeline, name, k)
            if key is not None:
                run.rd.done(path, key)


def open_run(cfg: Config, pipeline: Pipeline) -> Run:
    """The run context with its pipeline, no lock taken (single stages of ``iterdpo <stage>``)."""
    run = Run(cfg)
    run.pipeline = pipeline
    return run


def start_run(cfg: Config, pipeline: Pipeline, track: bool = True, stage: str | None = None) -> tuple[Run, object | None]:
    """Open the run directory and the tracker (rank 0 only, else None; ``track=False``: none).

    In order: the preflight (models, tokenizer, judge, servers, writable run directory, disk:
    :mod:`iterdpo.preflight`; ``stage`` limits it to what one stage needs), every stage's
    config check (a config without a judge fails here, not after the first training), the run lock
    (a second process exits 2 at once), the keys of the finished stages (a changed config
    fails here), and only then rank 0 writes config.yaml, so config.yaml always describes the
    outputs beside it. Nothing is created before the preflight has passed.
    """
    from iterdpo.preflight import preflight

    preflight(cfg, stage=stage)
    for each in pipeline.values():
        if each.check is not None:
            each.check(cfg)
    lock = RunLock(cfg.run_dir()).acquire()  # before any heavy import: a second process exits at once
    run = open_run(cfg, pipeline)
    run.lock = lock
    check_keys(run)
    if not dist.is_main():
        return run, None
    (run.rd.root / "config.yaml").write_text(dump_config(cfg))
    return run, make_tracker(run) if track else None


def run_stage(run: Run, stage: str, k: int | None) -> dict:
    """Run one stage of iteration k (and whatever it reads that has not run), multi-process aware."""
    return ensure(run, run.pipeline, stage, k)


def end_iteration(run: Run, k: int, tracker) -> None:
    """After iteration k: rank 0 rewrites summary.json and logs the iteration to the tracker."""
    if tracker is not None:
        write_summary(run)
        tracker.log_iteration(run, k)


def finish_run(run: Run, tracker, start: float) -> dict:
    """The summary; rank 0 also writes it, closes the tracker and prints the table; the lock is released."""
    try:
        if tracker is None:
            return summarize(run)
        summary = write_summary(run)
        tracker.finish(summary)
        log(f"finished {run.cfg.run.iterations} iteration(s) in {time.time() - start:.1f} s -> {run.rd.root / 'summary.json'}")
        print(format_table(summary), flush=True)
        return summary
    finally:
        close_run(run)


def close_run(run: Run) -> None:
    if run.lock is not None:
        run.lock.release()
        run.lock = None


def run_all(cfg: Config, pipeline: Pipeline, stages: tuple[str, ...] = STAGES) -> dict:
    """Run (or resume) every iteration; returns the summary (rank 0 writes the run's files)."""
    run, tracker = start_run(cfg, pipeline)
    try:
        start = time.time()
        for k in range(1, cfg.run.iterations + 1):
            for stage in stages:
                run_stage(run, stage, k)
            end_iteration(run, k, tracker)
        return finish_run(run, tracker, start)
    finally:
        close_run(run)

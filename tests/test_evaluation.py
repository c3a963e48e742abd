"""Evaluation metrics: correlations, KL estimate, ranking accuracy, and compare()."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iterdpo import records
from iterdpo.annotation.gold import GoldAnnotator
from iterdpo.evaluation import compare, kl_estimate, pearson, ranking_accuracy, ranks, spearman
from iterdpo.toy.task import gold_reward

floats = st.floats(-1e3, 1e3, allow_nan=False)


def test_pearson_and_spearman_known_values():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 1.0
    assert ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, float("nan"), 3], [1, 2, 5, 3]) == pytest.approx(1.0)  # non-finite pairs dropped


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(floats, floats), min_size=3, max_size=40))
def test_correlations_are_bounded_and_symmetric(pts):
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    for f in (pearson, spearman):
        r = f(xs, ys)
        assert math.isnan(r) or -1.0 <= r <= 1.0
        assert (math.isnan(r) and math.isnan(f(ys, xs))) or r == pytest.approx(f(ys, xs))


def test_kl_and_ranking_accuracy():
    assert kl_estimate([-1.0, -2.0], [-2.0, -4.0]) == pytest.approx(1.5)
    assert math.isnan(kl_estimate([-1.0], [float("nan")]))
    # pair 1 agrees, pair 2 disagrees, pair 3 a reward tie (0.5), pair 4 unlabelled, pair 5 judge tie
    assert ranking_accuracy([2, 0, 1, 5, 5], [1, 1, 1, 0, 0], [1, 1, -1, None, 0]) == pytest.approx(1.5 / 3)
    assert math.isnan(ranking_accuracy([], [], []))


def _answers(texts, prompts, tag):
    rows = [{"prompt_id": records.prompt_id(p), "completion_id": f"{records.prompt_id(p)}-0000", "prompt": p,
             "completion": t, "num_tokens": len(t.split()) + 1, "finish_reason": "stop"} for p, t in zip(prompts, texts, strict=True)]
    return records.from_rows(rows, records.COMPLETIONS)


def _scored(table, logps):
    rows = table.to_pylist()
    for r, (lp, rl) in zip(rows, logps, strict=True):
        r.update(policy_logp=lp, ref_logp=rl, reward=0.1 * (lp - rl), reward_norm=0.0, reward_simpo=0.0)
    return records.from_rows(rows, records.SCORED)


def test_compare_with_gold_and_implicit_metrics():
    prompts = ["Write about the cat and the dog.", "Describe a sun and a moon.", "Tell me of the tree and the road."]
    mine = _answers(["good kind cat dog", "bad sun", "the tree road"], prompts, "p")
    base = _answers(["bad cat", "lovely sun moon", "the tree road"], prompts, "b")
    # implicit rewards: policy answers 0.3, 0.1, 0.0; baseline answers 0.0, 0.2, 0.0
    ps = _scored(mine, [(-5, -8), (-5, -6), (-4, -4)])
    bs = _scored(base, [(-5, -5), (-5, -7), (-4, -4)])
    m = compare(mine, base, GoldAnnotator(), gold_reward, policy_scored=ps, baseline_scored=bs)
    assert m["win_rate"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["mean_gold_reward"] == pytest.approx(sum(gold_reward(p, t) for p, t in zip(prompts, ["good kind cat dog", "bad sun", "the tree road"], strict=True)) / 3)
    assert m["kl_to_reference"] == pytest.approx((3 + 1 + 0) / 3)
    assert m["mean_implicit_reward"] == pytest.approx(0.4 / 3)
    assert m["implicit_ranking_accuracy"] == pytest.approx(1.0)  # both decided pairs ordered as gold orders them
    assert m["implicit_reward_length_pearson"] is not None


def test_eval_judge_resolution():
    from iterdpo.config import ConfigError, load_config
    from iterdpo.stages.evaluate import eval_judge_name

    assert eval_judge_name(load_config(None, [])) == "gold"
    assert eval_judge_name(load_config(None, ["annotate.annotator=judge"])) == "judge"
    assert eval_judge_name(load_config(None, ["annotate.annotator=implicit"])) == "gold"  # toy task: gold judges
    assert eval_judge_name(load_config(None, ["annotate.annotator=implicit", "evaluate.judge=reward_model"])) == "reward_model"
    with pytest.raises(ConfigError, match="evaluate.judge"):
        eval_judge_name(load_config(None, ["annotate.annotator=human", "model.name_or_path=/some/model"]))


def test_compare_pairs_samples_and_reports_the_gold_gain_per_prompt():
    """Two samples per prompt pair by completion id; the gain averages a prompt's samples first."""
    prompts = ["Write about the cat and the dog.", "Describe a sun and a moon.", "Tell me of the tree and the road."]
    texts_mine = [["good kind cat dog", "cat dog"], ["bad sun", "lovely sun moon"], ["the tree road", "tree"]]
    texts_base = [["bad cat", "cat"], ["lovely sun moon", "sun"], ["the tree road", "road"]]

    def answers(texts):
        rows = [{"prompt_id": records.prompt_id(p), "completion_id": f"{records.prompt_id(p)}-{j:04d}", "prompt": p,
                 "completion": t, "num_tokens": len(t.split()), "finish_reason": "stop"}
                for p, ts in zip(prompts, texts, strict=True) for j, t in enumerate(ts)]
        return records.from_rows(rows, records.COMPLETIONS)

    mine, base = answers(texts_mine), answers(texts_base)
    m = compare(mine.take([5, 4, 3, 2, 1, 0]), base, GoldAnnotator(), gold_reward)  # pairing ignores row order
    assert (m["prompts"], m["answers"], m["judged"]) == (3, 6, 6)
    per_prompt = [
        sum(gold_reward(p, a) - gold_reward(p, b) for a, b in zip(tm, tb, strict=True)) / 2
        for p, tm, tb in zip(prompts, texts_mine, texts_base, strict=True)
    ]
    assert m["gold_reward_gain"] == pytest.approx(sum(per_prompt) / 3)
    low, high = m["gold_reward_gain_ci95"]
    assert low < m["gold_reward_gain"] < high and m["gold_reward_gain_n"] == 3
    assert m["gold_reward_gain"] == pytest.approx(m["mean_gold_reward"] - m["baseline_mean_gold_reward"])
    assert m["gold_reward_gain_detectable"] > 0
    same = compare(base, base, GoldAnnotator(), gold_reward)  # a policy against itself gains exactly nothing
    assert same["gold_reward_gain"] == 0.0 and same["gold_reward_gain_ci95"] == [0.0, 0.0]


def test_evaluation_samples_with_its_own_settings_not_the_training_samplers(toy_cache, tmp_path):
    """Before: evaluation inherited sample.top_p/top_k, so a training-sampler change moved the baseline."""
    from iterdpo.config import load_config
    from iterdpo.pipeline.driver import open_run, run_stage
    from iterdpo.stages import DEFAULT

    def baseline(name: str, *overrides: str):
        cfg = load_config(None, [f"run.output_dir={tmp_path}", f"run.name={name}", "evaluate.num_prompts=6",
                                 "evaluate.max_tokens=8", "evaluate.samples_per_prompt=2", *overrides])
        manifest = run_stage(open_run(cfg, DEFAULT), "baseline", None)
        return manifest["key"], records.read_table(tmp_path / name / "baseline" / "completions.parquet")

    key, answers = baseline("plain")
    key_other, answers_other = baseline("other_sampler", "sample.top_p=0.3", "sample.top_k=3", "sample.temperature=0.2")
    assert key == key_other and answers.equals(answers_other)
    assert answers.num_rows == 12  # 6 prompts x 2 samples, paired with the policy's by completion id
    key_eval, answers_eval = baseline("eval_top_k", "evaluate.top_k=1")  # evaluate's own settings do count
    assert key_eval != key and not answers_eval.equals(answers)


@pytest.mark.slow
def test_evaluate_without_scoring_keeps_gold_and_skips_kl(toy_cache, tmp_path):
    """evaluate.score_answers=false: no log-prob pass over the answers (empty eval_scored), the gold gain
    and win rate as usual, and no KL or implicit-reward metric pretending to have been measured."""
    from iterdpo.config import load_config
    from iterdpo.pipeline.driver import open_run, run_stage
    from iterdpo.stages import DEFAULT

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=noscore", "data.prompts_per_iteration=8", "sample.n=2",
                             "train.epochs=1", "evaluate.num_prompts=8", "evaluate.score_answers=false"])
    run_stage(open_run(cfg, DEFAULT), "evaluate", 1)
    done = tmp_path / "noscore" / "iter_1" / "evaluate"
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["prompts"] == 8 and "gold_reward_gain" in metrics and 0.0 <= metrics["win_rate"] <= 1.0
    assert not {"kl_to_reference", "mean_implicit_reward", "implicit_ranking_accuracy"} & set(metrics)
    assert records.read_table(done / "eval_scored.parquet").num_rows == 0
    assert records.read_table(done / "baseline_scored.parquet").num_rows == 0

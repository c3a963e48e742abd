"""The world task: gold reward properties, the biased annotator, config plumbing, one tiny build."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iterdpo import records
from iterdpo.config import ConfigError, load_config
from iterdpo.evaluation import pearson
from iterdpo.toy import world_task as task

TRAIN, HELD_OUT = task.split_prompts()
VOCAB = sorted({*task.TOPICS, *(d for ds in task.TOPICS.values() for d in ds), *task.POSITIVE, *task.NEGATIVE, *task.FILLER})
PROMPTS = [p["prompt"] for p in TRAIN[:50]]


def test_prompts_split_fixed_disjoint_and_parsed():
    assert len(TRAIN) == 1744 and len(HELD_OUT) == 200
    assert not {p["prompt"] for p in TRAIN} & {p["prompt"] for p in HELD_OUT}
    assert task.split_prompts()[1] == HELD_OUT
    assert {p["kind"] for p in HELD_OUT} == set(task.KINDS)
    for p in task.all_prompts():
        assert task.parse_prompt(p["prompt"])["topics"] == p["topics"]
    assert task.parse_prompt("Tell me something about the ocean.")["topics"] == ["ocean"]


def test_quality_terms_matter():
    x = "Describe the garden."
    assert task.gold_reward(x, "garden rose soil good bright happy") == pytest.approx(1.5)  # cover 1 + tone 0.5
    assert task.gold_reward(x, "the a is and") == 0.0
    assert task.gold_reward(x, "garden rose soil bad dark sad") == pytest.approx(0.5)
    assert task.gold_reward(x, "garden rose soil good ocean wave") < task.gold_reward(x, "garden rose soil good")  # off-topic
    warn = "Warn me about the garden."
    assert task.gold_reward(warn, "garden rose soil bad dark sad") == pytest.approx(2.0)
    assert task.gold_reward(warn, "garden rose soil good bright happy") == pytest.approx(0.0)
    assert task.gold_reward(x, "") == -1.0
    compare = "Compare the garden and the ocean."
    assert task.gold_reward(compare, "garden ocean") > task.gold_reward(compare, "garden")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PROMPTS), st.lists(st.sampled_from(VOCAB), min_size=1, max_size=40), st.data())
def test_length_alone_never_raises_gold(prompt, words, data):
    g = task.gold_reward(prompt, " ".join(words))
    assert -3.0 <= g <= 2.0
    # repeating a word already there never raises gold
    again = words + data.draw(st.lists(st.sampled_from(words), min_size=1, max_size=20))
    assert task.gold_reward(prompt, " ".join(again)) <= g
    # a new filler word leaves it unchanged
    unused = [w for w in task.FILLER if w not in words]
    if unused:
        assert task.gold_reward(prompt, " ".join([*words, data.draw(st.sampled_from(unused))])) == g


def test_sft_responses_spread_gold_and_length_independently():
    rng = random.Random(0)
    g, n = [], []
    for _ in range(4000):
        p = rng.choice(TRAIN)
        y = task.sft_response(rng, p)
        g.append(task.gold_reward(p["prompt"], y))
        n.append(len(task.words_of(y)))
    assert min(n) == 4 and max(n) == 40
    mean = sum(g) / len(g)
    assert (sum((x - mean) ** 2 for x in g) / len(g)) ** 0.5 > 0.5  # wide spread of quality
    assert abs(pearson(g, n)) < 0.1  # length is not a proxy for quality in the data


@pytest.mark.parametrize(("bias", "noise"), [(0.0, 0.0), (0.3, 0.0), (0.3, 0.2), (0.5, 0.4)])
def test_biased_annotator_shares(bias, noise):
    rows = task.offline_pairs(seed=3, length_bias=bias, noise=noise)
    n = len(rows)
    assert n == len(TRAIN) and rows == task.offline_pairs(seed=3, length_bias=bias, noise=noise)
    assert sum(r["length_biased"] for r in rows) == round(bias * n)
    assert sum(r["swapped"] for r in rows) == round(noise * n)
    for r in rows:
        assert r["chosen"] != r["rejected"] and r["gold_chosen"] != r["gold_rejected"] and r["len_chosen"] != r["len_rejected"]
        assert r["gold_chosen"] == task.gold_reward(r["prompt"], r["chosen"])
        assert r["len_chosen"] == len(task.words_of(r["chosen"]))
        # the label the annotator gave before any swap
        longer, better = r["len_chosen"] > r["len_rejected"], r["gold_chosen"] > r["gold_rejected"]
        assert (longer if r["length_biased"] else better) != r["swapped"]
    # length bias shows: the chosen response is longer more often than chance; gold agreement drops
    longer = sum(r["len_chosen"] > r["len_rejected"] for r in rows) / n
    agree = sum(r["gold_chosen"] > r["gold_rejected"] for r in rows) / n
    expected_agree = (1 - bias) + bias * 0.5  # length and gold are ~independent in the data
    expected_agree = expected_agree * (1 - noise) + (1 - expected_agree) * noise
    assert abs(agree - expected_agree) < 0.05
    assert abs(longer - (bias + (1 - bias) * 0.5) * (1 - noise) - (1 - bias - (1 - bias) * 0.5) * noise) < 0.05
    assert task.offline_pairs(seed=4, length_bias=bias, noise=noise) != rows


def test_offline_rows_validate_as_preference_file(tmp_path):
    rows = task.offline_pairs(seed=0, size=40)
    path = tmp_path / "offline.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = records.load_preferences(path)
    assert table.num_rows == 40 and table.column("chosen").to_pylist() == [r["chosen"] for r in rows]


def test_config_world_shorthands_and_gold():
    cfg = load_config(None, ["model.name_or_path=world", "data.prompts=world", "data.eval_prompts=world"])
    assert cfg.annotate.gold == "world"
    assert load_config(None).annotate.gold == "toy"
    assert load_config(None, ["model.name_or_path=some/model"]).annotate.gold is None
    assert load_config(None, ["model.name_or_path=some/model", "annotate.gold=world"]).annotate.gold == "world"
    with pytest.raises(ConfigError, match="annotate.gold"):
        load_config(None, ["model.name_or_path=world", "annotate.gold=toy"])
    with pytest.raises(ConfigError, match="annotate.gold"):
        load_config(None, ["annotate.gold=elsewhere"])
    with pytest.raises(ConfigError, match="sera.offline_length_bias"):
        load_config(None, ["sera.offline_length_bias=1.5"])


def test_gold_annotator_and_eval_judge_use_the_world_gold():
    from iterdpo.annotation import get_annotator
    from iterdpo.stages.evaluate import eval_judge_name

    cfg = load_config(None, ["model.name_or_path=/some/sft", "annotate.gold=world"])
    gold = get_annotator("gold", cfg.annotate)
    x = "Warn me about the garden."
    assert gold.compare([x], ["garden bad dark"], ["garden good bright"]) == [
        task.gold_reward(x, "garden bad dark") - task.gold_reward(x, "garden good bright")
    ]
    assert eval_judge_name(cfg) == "gold"
    with pytest.raises(ConfigError, match="annotate.gold"):
        eval_judge_name(load_config(None, ["model.name_or_path=/some/sft"]))


def test_sera_offline_world(tmp_path):
    import pyarrow.parquet as pq

    from iterdpo.pipeline.driver import open_run, run_stage
    from iterdpo.stages import SERA

    cfg = load_config(None, [
        f"run.output_dir={tmp_path}", "run.reference=previous", "select.selector=sera", "sera.ensemble_lambda=0",
        "sera.offline=world", "sera.offline_size=60", "sera.offline_noise=0.2", "sera.offline_length_bias=0.5",
    ])
    m = run_stage(open_run(cfg, SERA), "offline", None)
    assert m["stats"]["pairs"] == 60
    src = [json.loads(line) for line in (tmp_path / "toy" / "offline" / "offline_source.jsonl").read_text().splitlines()]
    assert sum(r["swapped"] for r in src) == 12 and sum(r["length_biased"] for r in src) == 30
    assert pq.read_table(tmp_path / "toy" / "offline" / "pairs.parquet").column("chosen").to_pylist() == [r["chosen"] for r in src]


@pytest.mark.slow
def test_tiny_world_builds_and_runs_one_iteration(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from iterdpo.annotation.reward_model import RewardModelAnnotator
    from iterdpo.toy.world import ensure_world

    monkeypatch.setenv("ITERDPO_CACHE", str(tmp_path / "cache"))
    world = ensure_world(0, "tiny")
    assert world.name == "world-v2-tiny-seed0" and ensure_world(0, "tiny") == world
    stats = json.loads((world / "build.json").read_text())
    assert 0.0 <= stats["rm_heldout_pairwise_accuracy"] <= 1.0 and stats["size"] == "tiny"
    AutoModelForCausalLM.from_pretrained(world / "sft")
    tok = AutoTokenizer.from_pretrained(world / "sft")
    assert tok.apply_chat_template([{"role": "user", "content": "Praise the farm."}], tokenize=False, add_generation_prompt=True) == "<|user|>Praise the farm.<|assistant|>"
    assert AutoModelForSequenceClassification.from_pretrained(world / "gold_rm").config.num_labels == 1
    rm = RewardModelAnnotator(str(world / "gold_rm"), progress=False)
    assert len(rm.compare(["Praise the farm."] * 2, ["farm cow good", "a"], ["bad", "farm hay"])) == 2
    for name in ("prompts_train.jsonl", "prompts_eval.jsonl"):
        assert records.load_prompts(world / name).num_rows == {"prompts_train.jsonl": 1744, "prompts_eval.jsonl": 200}[name]
    assert records.load_preferences(world / "offline.jsonl").num_rows == 1744

    # one loop iteration on the world: the reward-model annotator labels, the world's gold evaluates
    out = tmp_path / "runs"
    env = {**os.environ, "ITERDPO_CACHE": str(tmp_path / "cache")}
    p = subprocess.run(
        [sys.executable, "-m", "iterdpo", "run", f"model.name_or_path={world / 'sft'}", f"data.prompts={world / 'prompts_train.jsonl'}",
         f"data.eval_prompts={world / 'prompts_eval.jsonl'}", "annotate.annotator=reward_model", f"annotate.reward_model={world / 'gold_rm'}",
         "annotate.gold=world", "evaluate.judge=gold", "run.iterations=1", "data.prompts_per_iteration=16", "sample.n=3",
         "sample.max_tokens=24", "evaluate.num_prompts=8", "evaluate.max_tokens=24", "train.batch_size=8", "train.epochs=1",
         f"run.output_dir={out}", "run.name=w"],
        capture_output=True, text=True, env=env,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads((out / "w" / "summary.json").read_text())
    it = summary["iterations"][0]
    assert it["mean_gold_reward"] is not None and summary["baseline_mean_gold_reward"] is not None
    ev = json.loads((out / "w" / "iter_1" / "evaluate" / "metrics.json").read_text())
    answers = records.read_table(out / "w" / "iter_1" / "eval_responses" / "completions.parquet").to_pylist()
    assert ev["mean_gold_reward"] == pytest.approx(sum(task.gold_reward(r["prompt"], r["completion"]) for r in answers) / len(answers))
    assert json.loads((out / "w" / "iter_1" / "annotate" / "manifest.json").read_text())["stats"]["pairs"] > 0


def test_gold_is_a_function_of_the_task_features():
    """arm.embedding 'task_features': equal features give equal gold (gold is learnable on
    them), and the embedding refuses a task it does not describe."""
    import numpy as np

    from iterdpo.selection.embed import task_feature_embeddings

    rng = random.Random(0)
    prompts = task.all_prompts()
    rows, by_features = [], {}
    for i in range(2000):
        info = prompts[rng.randrange(len(prompts))]
        text = task.sft_response(rng, info)
        f = tuple(round(v, 6) for v in task.features(info["prompt"], text))
        g = task.gold_reward(info["prompt"], text)
        assert len(f) == len(task.FEATURES)
        assert by_features.setdefault(f, g) == pytest.approx(g), (info["prompt"], text)
        rows.append(dict(prompt_id=f"p{i}", completion_id=f"p{i}-0", prompt=info["prompt"], completion=text, num_tokens=1, finish_reason="stop"))
    assert len(by_features) > 100  # the features spread, they do not collapse
    table = records.from_rows(rows, records.COMPLETIONS)
    emb = task_feature_embeddings(table, "world")
    assert emb.shape == (2000, len(task.FEATURES)) and np.isfinite(emb).all()
    with pytest.raises(ValueError, match="world task only"):
        task_feature_embeddings(table.slice(0, 2), "toy")

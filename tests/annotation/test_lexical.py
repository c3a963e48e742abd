"""The lexical reward model: fitted to labels it learns their word weights and the topic term,
round-trips through its JSON file, serves as the 'reward_model' annotator, and a broken file
is one line naming the file and the field."""

from __future__ import annotations

import json
import random

import pytest

from iterdpo.annotation.lexical import FILE, LexicalRewardModel, is_lexical, pairwise_agreement

GOOD = ("great", "lovely", "superb", "handy", "sturdy", "bright")
BAD = ("awful", "flimsy", "broken", "dull", "noisy", "leaky")
FILL = ("the", "it", "is", "and", "my", "this", "really", "very", "today", "we")
ITEMS = ("kettle", "lamp", "scarf", "helmet", "tent", "blender", "teapot", "umbrella", "toaster", "jacket")
TEMPLATES = ("Write a review of a {}.", "Write a short review of a {}.", "Praise a {} you bought.")


def target(prompt: str, response: str) -> float:
    """A labeller the model cannot copy: distinct good minus bad words, +1 for naming the item."""
    ws = set(response.split())
    item = prompt.split()[-1].rstrip(".")
    return len(ws & set(GOOD)) - len(ws & set(BAD)) + (1.0 if item in ws else 0.0)


def data(seed: int, n: int) -> list[tuple[str, str, float]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        item = rng.choice(ITEMS)
        prompt = rng.choice(TEMPLATES).format(item)
        words = rng.choices(FILL, k=rng.randint(3, 8)) + rng.choices(GOOD, k=rng.randint(0, 3)) + rng.choices(BAD, k=rng.randint(0, 3))
        if rng.random() < 0.5:
            words.append(item)
        rng.shuffle(words)
        response = " ".join(words)
        rows.append((prompt, response, target(prompt, response)))
    return rows


@pytest.fixture(scope="module")
def fitted() -> LexicalRewardModel:
    rows = data(0, 300)
    return LexicalRewardModel.fit([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def test_fit_learns_the_labeller_and_generalises(fitted):
    assert all(fitted.vocab[w] > 0.3 for w in GOOD) and all(fitted.vocab[w] < -0.3 for w in BAD)
    # the item is a content word of its prompt ("write", "review", "a" are instruction words)
    assert {"write", "review", "a"} <= fitted.instruction_words and "kettle" not in fitted.instruction_words
    held = data(1, 200)
    pairs = [(a[0], a[1], b[1], a[2], target(a[0], b[1])) for a, b in zip(held[::2], held[1::2], strict=True)]
    got = pairwise_agreement(fitted, pairs)
    assert got["pairs"] > 60 and got["agreement"] > 0.85
    assert fitted.meta["fitted_on"] == 300 and fitted.meta["ridge"] in (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
    named = fitted.score_one("Write a review of a kettle.", "my kettle is great")
    unnamed = fitted.score_one("Write a review of a kettle.", "my lamp is great")
    assert named > unnamed  # naming the prompt's item pays, another item's name does not


def test_round_trip_and_annotator(fitted, tmp_path):
    from iterdpo.annotation import get_annotator
    from iterdpo.config import load_config

    fitted.save(tmp_path / "rm")
    assert is_lexical(tmp_path / "rm") and is_lexical(tmp_path / "rm" / FILE) and not is_lexical(tmp_path)
    again = LexicalRewardModel.load(tmp_path / "rm")
    prompts, responses = ["Praise a tent you bought."] * 2, ["this tent is superb and sturdy", "awful leaky tent"]
    assert again.score(prompts, responses) == fitted.score(prompts, responses)
    cfg = load_config(None, ["annotate.annotator=reward_model", f"annotate.reward_model={tmp_path / 'rm'}"])
    rm = get_annotator("reward_model", cfg.annotate)
    assert rm.name == "reward_model"
    assert rm.compare(prompts[:1], responses[:1], responses[1:])[0] > 0
    assert rm.compare(prompts[:1], responses[1:], responses[:1])[0] < 0


def test_preflight_accepts_the_folder(fitted, tmp_path):
    from iterdpo.config import load_config
    from iterdpo.errors import PreflightError
    from iterdpo.preflight import preflight

    fitted.save(tmp_path / "rm")
    over = [f"run.output_dir={tmp_path}/runs", "annotate.annotator=reward_model", "evaluate.judge=gold"]
    preflight(load_config(None, [*over, f"annotate.reward_model={tmp_path / 'rm'}"]), warn=lambda line: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreflightError, match=r"annotate.reward_model: .*empty: no config.json or lexical_reward.json"):
        preflight(load_config(None, [*over, f"annotate.reward_model={tmp_path / 'empty'}"]))


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: "{not json", r"lexical_reward.json: not valid JSON"),
    (lambda d: {**d, "kind": "bert"}, r"lexical_reward.json, field 'kind': expected 'iterdpo-lexical-reward'"),
    (lambda d: {k: v for k, v in d.items() if k != "vocab"}, r"field 'vocab': missing or of the wrong type"),
    (lambda d: {**d, "feature_weights": {"log_words": 1.0}}, r"field 'feature_weights': no number for type_token, topic_any"),
    (lambda d: {**d, "vocab": {"great": "high"}}, r"field 'vocab': the weight of 'great' is not a number"),
])
def test_a_broken_file_names_file_and_field(fitted, tmp_path, change, message):
    path = fitted.save(tmp_path)
    new = change(json.loads(path.read_text()))
    path.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(ValueError, match=message):
        LexicalRewardModel.load(tmp_path)
    with pytest.raises(ValueError, match=r"nope/lexical_reward.json: lexical reward model not found"):
        LexicalRewardModel.load(tmp_path / "nope" / FILE)


def test_fit_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match=r"equally long, non-empty .* \(got 2, 1, 2\)"):
        LexicalRewardModel.fit(["a", "b"], ["x"], [1.0, 2.0])

"""The reviews task: prompts and split, and properties of the AFINN gold reward."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("afinn")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from iterdpo.real import reviews  # noqa: E402

PROMPT = "Write a short positive review of a ceramic coffee mug."
VOCAB = list(reviews.POSITIVE + reviews.NEGATIVE + reviews.NEUTRAL) + ["the", "it", "is", "and", "a", "mug", "very", "my", "this"]
texts = st.lists(st.sampled_from(VOCAB), min_size=reviews.MIN_WORDS, max_size=40).map(" ".join)


def test_prompts_split_is_disjoint_deterministic_and_large_enough():
    train, held = reviews.split_prompts()
    assert len(train) + len(held) == len(reviews.ITEMS) * len(reviews.TEMPLATES) == 480
    assert len(held) >= 128
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held}
    assert reviews.split_prompts() == (train, held)
    assert all(reviews.item_of(p["prompt"]) == p["item"] for p in train + held)
    assert "an electric kettle" in " ".join(p["prompt"] for p in train + held)  # the article is fixed


@settings(max_examples=200, deadline=None)
@given(texts)
def test_gold_is_bounded(y):
    assert -3.5 <= reviews.gold_reward(PROMPT, y) <= 1.5


@settings(max_examples=200, deadline=None)
@given(texts)
def test_saying_it_again_never_helps(y):
    """Repeating the whole answer leaves tone and topic as they were and adds repeated trigrams."""
    assert reviews.gold_reward(PROMPT, y + ". " + y) <= reviews.gold_reward(PROMPT, y) + 1e-12


@settings(max_examples=200, deadline=None)
@given(texts, st.sampled_from(["superb", "wonderful", "delightful", "fantastic", "excellent"]))
def test_a_new_positive_word_never_hurts(y, word):
    if word in y.split():
        return
    assert reviews.gold_reward(PROMPT, y + " " + word) >= reviews.gold_reward(PROMPT, y) - 1e-12


@settings(max_examples=100, deadline=None)
@given(texts)
def test_naming_the_item_is_worth_exactly_one(y):
    words = [w for w in y.split() if w != "mug"]
    if len(words) < reviews.MIN_WORDS:
        return
    off = " ".join(words)
    on = off + " mugs"  # a plural names the item too; the appended trigram is new, so rescore both with it
    c_on, c_off = reviews.gold_components(PROMPT, on), reviews.gold_components(PROMPT, off + " cups")
    assert c_on["topic"] == 0.5 and c_off["topic"] == -0.5
    assert c_on["gold"] - c_off["gold"] == pytest.approx(1.0)


def test_gold_orders_what_a_person_wants():
    good = "This mug is wonderful: it keeps my coffee hot and the glaze is beautiful. I love it."
    bland = "This mug holds coffee. It is blue and it sits on my desk next to the lamp."
    bad = "This mug is terrible, the handle broke and the glaze is ugly. I hate it."
    off_topic = "What a wonderful sunny day, I love walking in the beautiful park with friends."
    stuffed = "This mug is wonderful. This mug is wonderful. This mug is wonderful. This mug is wonderful."
    g = {k: reviews.gold_reward(PROMPT, v) for k, v in
         dict(good=good, bland=bland, bad=bad, off_topic=off_topic, stuffed=stuffed).items()}
    assert g["good"] > g["bland"] > g["bad"]
    assert g["good"] > g["off_topic"] and g["good"] > g["stuffed"]
    assert reviews.gold_reward(PROMPT, "Great mug!") == -1.5  # under MIN_WORDS
    assert reviews.gold_reward(PROMPT, "") == -1.5


def test_gold_is_registered_and_named_by_the_config():
    from iterdpo.annotation.gold import GOLD_REWARDS, GoldAnnotator
    from iterdpo.config import load_config

    assert GOLD_REWARDS["reviews"] is reviews.gold_reward
    assert GoldAnnotator("reviews").compare([PROMPT], ["This mug is wonderful and I love it."], ["This mug is awful and I hate it."])[0] > 0
    cfg = load_config(None, ["data.prompts=reviews", "data.eval_prompts=reviews", "model.name_or_path=smollm2-135m"])
    assert cfg.annotate.gold == "reviews"


def test_offline_pairs_are_oriented_by_gold():
    train, _ = reviews.split_prompts()
    rows = reviews.offline_pairs(train[:40], seed=3)
    assert len(rows) >= 38
    for r in rows:
        assert reviews.gold_reward(r["prompt"], r["chosen"]) > reviews.gold_reward(r["prompt"], r["rejected"])
    json.dumps(rows)


def test_reward_model_annotator_differs_from_gold_but_agrees_mostly(reviews_cache):
    """The reward model is fitted on gold labels of SmolLM2's answers to the training prompts: on
    answer pairs to the held-out prompts it agrees with gold mostly, and not always (it is another
    annotator, not gold)."""
    from iterdpo.annotation import get_annotator
    from iterdpo.config import load_config

    build = json.loads((reviews_cache / "build.json").read_text())
    assert 0.65 < build["rm_heldout_pairwise_agreement"] < 1.0 and build["rm_heldout_pairs"] > 100
    for name in ("prompts_train.jsonl", "prompts_eval.jsonl", "offline_pairs.jsonl"):
        assert (reviews_cache / name).stat().st_size > 0
    cfg = load_config("recipes/configs/smollm2-135m/iterative_dpo.yaml", [])
    rm = get_annotator("reward_model", cfg.annotate)
    assert rm.path == str(reviews_cache / "lexical_rm")
    good = "This mug is wonderful, I love it and the glaze is beautiful."
    bad = "This mug is terrible, the handle broke and I hate it."
    assert rm.compare([PROMPT], [good], [bad])[0] > 0

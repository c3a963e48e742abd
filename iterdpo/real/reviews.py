"""The reviews task: "write a positive review of <item>" for a real model (SmolLM2-135M).

Prompts: 48 everyday items x 10 instruction templates = 480 prompts, split by a seeded
shuffle into 320 training and 160 held-out prompts (``split_prompts``).

Gold reward (``gold_reward(prompt, response)``), what a person asking for a positive
review wants, measured with the AFINN sentiment lexicon (the ``afinn`` package: 3,382
English words and phrases scored -5..+5 by a person, Nielsen 2011), not with anything the
policy or the annotator was built from::

    words      = lower-cased words of the response ([a-z']+)
    sentiment  = sum of AFINN scores of the DISTINCT lexicon terms found          (repeats count once)
    tone       = tanh(sentiment / 25)                                             in (-1, 1)
    topic      = +0.5 if the response names the prompt's item (a head noun, singular or plural),
                 -0.5 if it does not, 0 for a prompt about no known item
    repetition = 1 - distinct word trigrams / word trigrams                      in [0, 1)
    gold       = tone + topic - 2 * repetition,   or -1.5 for fewer than 5 words

Length is never rewarded directly; a longer answer only gains by using more distinct
positive words, and ``tanh`` saturates that gain (a typical enthusiastic 50-word answer of
SmolLM2 scores sentiment ~17, tone 0.59; ten distinct "great"-strength words give 0.83). How it can be hacked (what it does NOT measure): it has no
notion of truth, grammar or coherence, so a list of distinct positive words plus the item
name scores near the maximum (1.5); AFINN ignores negation ("not bad" counts as bad,
"not good" as good) and sarcasm; the topic check is one keyword, so naming the item once
and then writing about anything else passes.

Annotator (differs from gold): ``annotate.reward_model: reviews`` is a lexical reward model
(:mod:`iterdpo.annotation.lexical`): a ridge regression over which words an answer uses, its
length, its type-token ratio and its overlap with the prompt's rarer words, fitted on the gold
rewards of SmolLM2's own answers to the *training* prompts (shipped, with the script that sampled
them: :mod:`iterdpo.real.answers`). Like a reward model fitted on human labels of the SFT model's
samples, it never sees the lexicon, learns one weight per word from ~640 answers (words it never
saw weigh nothing), is linear where gold saturates (tanh), counts any rare prompt word as "on
topic" where gold wants the item's head noun, and measures repetition by distinct words, not
trigrams; its pairwise agreement with gold on answers to the held-out prompts is in the build
stats and in benchmarks/real.md.

``ensure_reviews()`` builds once into ``$ITERDPO_CACHE/reviews-v2-seed0/``::

    prompts_train.jsonl   320 prompts
    prompts_eval.jsonl    160 held-out prompts
    offline_pairs.jsonl   synthetic review pairs labelled by gold (SeRA's offline set, sera.offline: reviews)
    lexical_rm/           the reward model (lexical_reward.json)
    build.json            build stats
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from functools import lru_cache
from pathlib import Path

VERSION = "reviews-v2"  # v2: the lexical reward model fitted on SmolLM2's answers (v1: a BERT on synthetic reviews)
TASK = "reviews"
MIN_WORDS = 5
TONE_SCALE = 25.0

# item -> head nouns that count as naming it (singular forms; a trailing "s" also matches)
ITEMS: dict[str, tuple[str, ...]] = {
    "ceramic coffee mug": ("mug",), "pair of hiking boots": ("boot", "boots"), "wireless headphones": ("headphone", "headphones"),
    "cast iron skillet": ("skillet", "pan"), "paperback mystery novel": ("novel", "book"), "electric kettle": ("kettle",),
    "yoga mat": ("mat",), "desk lamp": ("lamp",), "backpack": ("backpack", "bag"), "wool scarf": ("scarf",),
    "mechanical keyboard": ("keyboard",), "blender": ("blender",), "camping tent": ("tent",), "fountain pen": ("pen",),
    "bicycle helmet": ("helmet",), "board game": ("game",), "rain jacket": ("jacket",), "water bottle": ("bottle",),
    "office chair": ("chair",), "houseplant": ("plant", "houseplant"), "toaster": ("toaster",), "umbrella": ("umbrella",),
    "pair of running shoes": ("shoe", "shoes", "sneaker"), "smartphone case": ("case",), "bluetooth speaker": ("speaker",),
    "kitchen knife": ("knife", "knives"), "cookbook": ("cookbook", "book"), "travel pillow": ("pillow",),
    "alarm clock": ("clock",), "sketchbook": ("sketchbook", "book"), "teapot": ("teapot", "pot"), "wristwatch": ("watch",),
    "pair of sunglasses": ("sunglasses", "glasses"), "sleeping bag": ("bag",), "frying pan": ("pan",),
    "winter coat": ("coat",), "photo frame": ("frame",), "garden hose": ("hose",), "coffee grinder": ("grinder",),
    "pizza restaurant": ("restaurant", "pizza"), "neighbourhood bakery": ("bakery",), "local library": ("library",),
    "science museum": ("museum",), "city park": ("park",), "hotel by the sea": ("hotel",), "jazz concert": ("concert",),
    "bookshop": ("bookshop", "shop", "store"), "weekend cooking class": ("class", "course"),
}
TEMPLATES = (
    "Write a short positive review of a {item}.",
    "Write a glowing two-sentence review of a {item}.",
    "Write an enthusiastic customer review of a {item}.",
    "Write a few sentences praising a {item} you bought.",
    "Review a {item} you love, in under 60 words.",
    "Write a five-star review of a {item}.",
    "Tell a friend, in a short message, why you like your {item}.",
    "Write a cheerful online review of a {item}.",
    "Write a brief, positive testimonial for a {item}.",
    "Describe in three sentences what is great about a {item}.",
)
NUM_EVAL = 160
# SmolLM2's answers to every prompt, sampled once by iterdpo.real.answers and shipped: the reward model's data
ANSWERS_FILE = Path(__file__).parent / "data" / "reviews_smollm2_answers.jsonl"
WORD = re.compile(r"[a-z']+")


def _fix_article(text: str) -> str:
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def all_prompts() -> list[dict]:
    """Every prompt of the task: ``{"prompt", "item"}``, in a fixed order."""
    return [{"prompt": _fix_article(t.format(item=item)), "item": item} for item in ITEMS for t in TEMPLATES]


def split_prompts(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded shuffle, the last NUM_EVAL prompts held out."""
    rows = all_prompts()
    random.Random(seed).shuffle(rows)
    return rows[:-NUM_EVAL], rows[-NUM_EVAL:]


@lru_cache(maxsize=1)
def _item_of_prompt() -> dict[str, str]:
    return {r["prompt"]: r["item"] for r in all_prompts()}


def item_of(prompt: str) -> str | None:
    """The item a prompt asks about: a task prompt's own, else the longest item named in it."""
    item = _item_of_prompt().get(prompt)
    if item is not None:
        return item
    low = prompt.lower()
    named = [i for i in ITEMS if i in low]
    return max(named, key=len) if named else None


@lru_cache(maxsize=1)
def _lexicon():
    try:
        from afinn import Afinn
    except ImportError as e:
        from iterdpo.real import SetupError

        raise SetupError("the reviews task's gold reward needs the 'afinn' package: pip install afinn==0.1") from e
    return Afinn(language="en")


def names_item(words: list[str], item: str) -> bool:
    nouns = ITEMS[item]
    return any(w in nouns or (w.endswith("s") and w[:-1] in nouns) for w in words)


def gold_components(prompt: str, response: str) -> dict[str, float]:
    """The terms of the gold reward (see the module docstring) and their total ``gold``."""
    words = WORD.findall(response.lower())
    if len(words) < MIN_WORDS:
        return {"words": len(words), "sentiment": 0.0, "tone": 0.0, "topic": 0.0, "repetition": 0.0, "gold": -1.5}
    lexicon = _lexicon()
    terms = set(lexicon.find_all(response.lower()))
    sentiment = float(sum(lexicon.score(t) for t in terms))
    tone = math.tanh(sentiment / TONE_SCALE)
    item = item_of(prompt)
    topic = 0.0 if item is None else (0.5 if names_item(words, item) else -0.5)
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    repetition = 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    return {"words": len(words), "sentiment": sentiment, "tone": tone, "topic": topic, "repetition": repetition,
            "gold": tone + topic - 2.0 * repetition}


def gold_reward(prompt: str, response: str) -> float:
    """Gold reward of a response to a reviews prompt, in [-3.5, 1.5] (module docstring)."""
    return gold_components(prompt, response)["gold"]


# --- synthetic reviews: the reward model's training data and SeRA's offline set ----------------

POSITIVE = ("great", "excellent", "wonderful", "lovely", "perfect", "amazing", "fantastic", "beautiful", "happy",
            "reliable", "comfortable", "impressive", "delightful", "nice", "good", "best", "recommend", "love",
            "enjoy", "thrilled", "superb", "pleasant", "elegant", "charming", "glad")
NEGATIVE = ("bad", "terrible", "awful", "poor", "broken", "disappointed", "annoying", "useless", "cheap", "worst",
            "hate", "ugly", "problem", "sad", "failed", "waste", "boring", "fragile", "leaky", "noisy")
NEUTRAL = ("blue", "heavy", "small", "large", "round", "metal", "plastic", "wooden", "new", "simple", "light",
           "dark", "quiet", "tall", "thin", "soft", "warm", "modern", "classic", "practical")
OPENERS = ("I bought this {item} last month.", "My {item} arrived on Tuesday.", "I have used the {item} every day.",
           "This {item} was a gift.", "I tried the {item} for a week.", "We picked up this {item} recently.")
SENTENCES = ("It is {adj}.", "The {noun} feels {adj}.", "Honestly, it is {adj} and {adj2}.", "The design is {adj}.",
             "I think it is {adj}.", "The quality is {adj}.", "Everyone says it looks {adj}.",
             "It works and the price is {adj}.", "Overall a {adj} experience.", "The {noun} is {adj} to use.")
FILLER = ("I use it in the morning.", "It came in a box.", "The colour is what I expected.",
          "Shipping took three days.", "It fits on the shelf.", "My family noticed it too.")


def synthetic_review(rng: random.Random, item: str) -> str:
    """A templated review of ``item`` whose quality varies widely: tone, topic, repetition."""
    on_topic = rng.random() < 0.8
    named = item if on_topic else rng.choice([i for i in ITEMS if i != item])
    noun = ITEMS[named][0]
    mood = rng.random()  # share of positive words
    pools = (POSITIVE, NEGATIVE, NEUTRAL)

    def adj() -> str:
        r = rng.random()
        pool = pools[0] if r < mood * 0.8 else pools[1] if r < 0.8 else pools[2]
        return rng.choice(pool)

    sents = [rng.choice(OPENERS).format(item=named)] if rng.random() < 0.8 else []
    for _ in range(rng.randint(1, 5)):
        if rng.random() < 0.25:
            sents.append(rng.choice(FILLER))
        else:
            sents.append(rng.choice(SENTENCES).format(adj=adj(), adj2=adj(), noun=noun))
    if rng.random() < 0.2 and sents:  # repetition: one sentence said again and again
        sents += [rng.choice(sents)] * rng.randint(1, 4)
    if rng.random() < 0.05:
        sents = sents[:1] if rng.random() < 0.5 else [""]
    return " ".join(sents)


def offline_pairs(prompts: list[dict], *, seed: int, per_prompt: int = 1) -> list[dict]:
    """(prompt, chosen, rejected) of two synthetic reviews per prompt, oriented by gold (ties skipped)."""
    rng = random.Random(seed)
    rows = []
    for p in prompts:
        for _ in range(per_prompt):
            for _attempt in range(10):
                a, b = synthetic_review(rng, p["item"]), synthetic_review(rng, p["item"])
                ga, gb = gold_reward(p["prompt"], a), gold_reward(p["prompt"], b)
                if ga != gb:
                    rows.append({"prompt": p["prompt"], "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
                    break
    return rows


# --- the reward model ------------------------------------------------------------------------


def read_answers(path: str | Path) -> list[dict]:
    """The rows of an answers file (:mod:`iterdpo.real.answers`); ValueError naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: answers file not found (python -m iterdpo.real.answers writes it)")
    from iterdpo.records import iter_rows  # JSONL lines with the file and line in every error

    rows = []
    for where, row in iter_rows(path):
        for field in ("split", "prompt", "completion"):
            if not isinstance(row.get(field), str):
                raise ValueError(f"{where}, field {field!r}: missing or not a string")
        if row["split"] not in ("train", "eval"):
            raise ValueError(f"{where}, field 'split': {row['split']!r} is neither 'train' nor 'eval'")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no answers")
    return rows


def build_reward_model(dest: Path, answers_file: str | Path | None = None) -> dict:
    """Fit the lexical reward model (:mod:`iterdpo.annotation.lexical`) on the gold rewards of SmolLM2's
    own answers to the TRAINING prompts; save it to ``dest``.

    Returns the fit's stats, including its pairwise agreement with gold on answer pairs to the
    held-out prompts (two answers per prompt, gold ties left out), which it never saw.
    """
    from iterdpo.annotation.lexical import LexicalRewardModel, pairwise_agreement

    answers_file = Path(answers_file or ANSWERS_FILE)
    rows = read_answers(answers_file)
    fit = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "eval"]
    train_prompts = {p["prompt"] for p in split_prompts()[0]}
    leaked = sum(r["prompt"] not in train_prompts for r in fit)
    if leaked or not fit:
        raise ValueError(f"{answers_file}: {leaked} 'train' answers are to prompts outside the training split "
                         f"(or none at all: {len(fit)}); regenerate it with python -m iterdpo.real.answers")
    model = LexicalRewardModel.fit([r["prompt"] for r in fit], [r["completion"] for r in fit],
                                   [gold_reward(r["prompt"], r["completion"]) for r in fit])
    model.save(dest)
    by_prompt: dict[str, list[str]] = {}
    for r in held:
        by_prompt.setdefault(r["prompt"], []).append(r["completion"])
    pairs = [(x, ys[i], ys[j], gold_reward(x, ys[i]), gold_reward(x, ys[j]))
             for x, ys in by_prompt.items() for i in range(len(ys)) for j in range(i + 1, len(ys))]
    agree = pairwise_agreement(model, pairs)
    return {"rm_kind": "lexical (iterdpo.annotation.lexical)", "rm_answers_file": answers_file.name,
            "rm_fitted_answers": len(fit), "rm_vocab": model.meta["vocab"], "rm_ridge": model.meta["ridge"],
            "rm_cv_pairwise_agreement": model.meta["cv_pairwise_agreement"],
            "rm_heldout_pairwise_agreement": round(agree["agreement"], 4) if agree["pairs"] else None,  # None: gold tied every pair
            "rm_heldout_pairs": agree["pairs"],
            "rm_heldout_prompts": len(by_prompt)}


def _build(dest: Path, seed: int) -> dict:
    start = time.time()
    train, held_out = split_prompts(seed)
    for name, rows in (("prompts_train.jsonl", train), ("prompts_eval.jsonl", held_out)):
        with open(dest / name, "w") as f:
            for r in rows:
                f.write(json.dumps({"prompt": r["prompt"], "source": TASK}) + "\n")
    offline = offline_pairs(train, seed=seed + 1)
    with open(dest / "offline_pairs.jsonl", "w") as f:
        for r in offline:
            f.write(json.dumps(r) + "\n")
    stats = build_reward_model(dest / "lexical_rm")
    stats.update({"seed": seed, "train_prompts": len(train), "eval_prompts": len(held_out), "offline_pairs": len(offline),
                  "build_seconds": round(time.time() - start, 1)})
    (dest / "build.json").write_text(json.dumps(stats, indent=2))
    return stats


def ensure_reviews(seed: int = 0) -> Path:
    """The reviews task's cache folder, built once (needs afinn; ~10 s)."""
    from iterdpo.toy.build import cache_root, cached_build

    _lexicon()  # fail before the lock when afinn is missing
    return cached_build(cache_root() / f"{VERSION}-seed{seed}", f"{VERSION}.lock", lambda tmp: _build(tmp, seed), "the reviews task")


def resolve(value: str, what: str) -> str:
    """Task shorthands in config paths: ``reviews`` for ``annotate.reward_model`` / ``sera.offline``."""
    if value != TASK:
        return value
    sub = {"reward_model": "lexical_rm", "offline": "offline_pairs.jsonl"}[what]
    return str(ensure_reviews() / sub)

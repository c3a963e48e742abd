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

Annotator (differs from gold): ``annotate.reward_model: reviews`` is a small
bidirectional transformer classifier (a 2-layer BERT, hidden 64, with its own 1,024-token BPE)
regressed on the gold rewards of seeded *synthetic* reviews (templated sentences with
positive, negative and neutral words, off-topic items and repeated sentences), never on the
policy's own samples: like a real reward model it sees another distribution than the one it
judges, so it agrees with gold only partly (its pairwise agreement with gold is in the
build stats and in benchmarks/real.md).

``ensure_reviews()`` builds once into ``$ITERDPO_CACHE/reviews-v1/``::

    prompts_train.jsonl   320 prompts
    prompts_eval.jsonl    160 held-out prompts
    offline_pairs.jsonl   synthetic review pairs labelled by gold (SeRA's offline set, sera.offline: reviews)
    gold_rm/              the reward model (AutoModelForSequenceClassification, num_labels=1)
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

VERSION = "reviews-v1"
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


def build_reward_model(dest: Path, *, seed: int = 0, examples: int = 8000, steps: int = 400, batch: int = 64,
                       lr: float = 2e-3) -> dict:
    """Regress a small BERT classifier on the gold rewards of synthetic reviews; save it to ``dest``.

    Its own byte-level BPE tokenizer (1,024 tokens, trained on the synthetic reviews and the
    prompts; any text still tokenises) has no chat template, so the annotator scores
    ``prompt + "\n" + response``, as here. Returns the fit's stats, including the pairwise
    agreement with gold on held-out synthetic pairs.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from iterdpo.toy.build import build_tokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    train, _ = split_prompts()
    rows = []
    for _ in range(examples):
        p = rng.choice(train)
        y = synthetic_review(rng, p["item"])
        rows.append((p["prompt"] + "\n" + y, gold_reward(p["prompt"], y)))
    tokenizer = build_tokenizer([t for t, _ in rows[:3000]], vocab_size=1024)
    tokenizer.chat_template = None  # the annotator then scores "prompt\nresponse"
    tokenizer.padding_side = "right"
    cut = int(0.9 * len(rows))
    fit, held = rows[:cut], rows[cut:]
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=512, num_labels=1,
                     pad_token_id=tokenizer.pad_token_id, problem_type="regression")
    model = BertForSequenceClassification(cfg)

    def batch_of(items):
        enc = tokenizer([t for t, _ in items], padding=True, truncation=True, max_length=256, return_tensors="pt")
        enc.pop("token_type_ids", None)  # as the annotator calls it: ids and mask only
        return enc, torch.tensor([g for _, g in items], dtype=torch.float32)

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        enc, target = batch_of(rng.sample(fit, batch))
        pred = model(**enc).logits[:, 0]
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(held), 128):
            enc, _ = batch_of(held[i: i + 128])
            preds += model(**enc).logits[:, 0].tolist()
    golds = [g for _, g in held]
    pairs = [(i, i + 1) for i in range(0, len(held) - 1, 2) if golds[i] != golds[i + 1]]
    agree = sum((preds[i] > preds[j]) == (golds[i] > golds[j]) for i, j in pairs) / max(1, len(pairs))
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return {"rm_train_loss_last": sum(losses[-20:]) / 20, "rm_heldout_pairwise_agreement": round(agree, 4),
            "rm_heldout_pairs": len(pairs)}


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
    stats = build_reward_model(dest / "gold_rm", seed=seed)
    stats.update({"seed": seed, "train_prompts": len(train), "eval_prompts": len(held_out), "offline_pairs": len(offline),
                  "build_seconds": round(time.time() - start, 1)})
    (dest / "build.json").write_text(json.dumps(stats, indent=2))
    return stats


def ensure_reviews(seed: int = 0) -> Path:
    """The reviews task's cache folder, built once (needs afinn)."""
    from iterdpo.toy.build import cache_root, cached_build

    _lexicon()  # fail before the lock when afinn is missing
    return cached_build(cache_root() / f"{VERSION}-seed{seed}", f"{VERSION}.lock", lambda tmp: _build(tmp, seed), "the reviews task")


def resolve(value: str, what: str) -> str:
    """Task shorthands in config paths: ``reviews`` for ``annotate.reward_model`` / ``sera.offline``."""
    if value != TASK:
        return value
    sub = {"reward_model": "gold_rm", "offline": "offline_pairs.jsonl"}[what]
    return str(ensure_reviews() / sub)

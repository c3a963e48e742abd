"""The built-in toy task: describe one or two topics, kindly.

A prompt asks to write about two topics (``"Write about the cat and the river."``). A
response is a short sequence of words. The programmatic gold reward is::

    gold(x, y) = (#positive words - #negative words) / max(#words, 4)
                 + 0.5 * [first topic mentioned] + 0.5 * [second topic mentioned]

so it lies in [-1, 2]. The warm-up (SFT) data mixes positive, negative and neutral
words in random proportions and mentions each topic half of the time, so the starting
policy writes text of the right shape with a wide spread of gold reward: preference
learning has something to find, and it must condition on the prompt to find all of it.
"""

from __future__ import annotations

import random

TOPICS = [
    "cat", "dog", "bird", "fish", "tree", "river", "moon", "sun",
    "house", "road", "book", "song", "rain", "snow", "city", "garden",
]
POSITIVE = ["good", "kind", "bright", "happy", "warm", "calm", "lovely", "gentle", "fresh", "sweet", "clear", "brave"]
NEGATIVE = ["bad", "cruel", "dark", "sad", "cold", "angry", "ugly", "harsh", "stale", "bitter", "dull", "weak"]
NEUTRAL = ["the", "a", "is", "and", "very", "quite", "near", "with", "of", "it"]
TEMPLATES = [
    "Write about the {a} and the {b}.",
    "Tell me of the {a} and the {b}.",
    "Describe a {a} and a {b}.",
    "Say something about the {a} and the {b}.",
]
_POS, _NEG = set(POSITIVE), set(NEGATIVE)


def all_prompts() -> list[dict]:
    """Every toy prompt (16 * 15 * 4 = 960) with its topics, in a fixed order."""
    out = []
    for t in TEMPLATES:
        for a in TOPICS:
            for b in TOPICS:
                if a != b:
                    out.append({"prompt": t.format(a=a, b=b), "topics": [a, b]})
    return out


def split_prompts(seed: int = 1234, eval_size: int = 128) -> tuple[list[dict], list[dict]]:
    """A fixed train / held-out split; held-out prompts share topics but not topic pairs
    or templates with a given train prompt only by chance."""
    prompts = all_prompts()
    random.Random(seed).shuffle(prompts)
    return prompts[eval_size:], prompts[:eval_size]


def topics_of(prompt: str) -> list[str]:
    words = prompt.rstrip(".").split()
    return [w for w in words if w in TOPICS]


def gold_reward(prompt: str, response: str) -> float:
    """The task's gold reward (see the module docstring); works on any text."""
    words = [w.strip(".,!?").lower() for w in response.split()]
    words = [w for w in words if w]
    score = (sum(w in _POS for w in words) - sum(w in _NEG for w in words)) / max(len(words), 4)
    return score + 0.5 * sum(t in words for t in topics_of(prompt))


def sft_response(rng: random.Random, topics: list[str]) -> str:
    """One warm-up response: 4-10 words of random sentiment, each topic mentioned w.p. 0.5."""
    n = rng.randint(4, 10)
    p_pos = rng.random()
    p_neg = rng.random() * (1 - p_pos)
    words = []
    for _ in range(n):
        u = rng.random()
        words.append(rng.choice(POSITIVE if u < p_pos else NEGATIVE if u < p_pos + p_neg else NEUTRAL))
    for t in topics:
        if rng.random() < 0.5:
            words[rng.randrange(len(words))] = t
    return " ".join(words)


def offline_pairs(prompts: list[str], seed: int, noise: float = 0.0) -> list[dict]:
    """An offline preference set: per prompt two warm-up-style answers, the gold-better one
    chosen; then a seeded ``noise`` share of the pairs swapped (SeRA's robustness setting).

    Pairs with equal gold reward are skipped. Returns rows ``{prompt, chosen, rejected}``.
    """
    rng = random.Random(seed)
    rows = []
    for p in prompts:
        a, b = sft_response(rng, topics_of(p)), sft_response(rng, topics_of(p))
        ga, gb = gold_reward(p, a), gold_reward(p, b)
        if ga != gb:
            rows.append({"prompt": p, "chosen": a if ga > gb else b, "rejected": b if ga > gb else a})
    for i in rng.sample(range(len(rows)), round(noise * len(rows))):
        rows[i]["chosen"], rows[i]["rejected"] = rows[i]["rejected"], rows[i]["chosen"]
    return rows

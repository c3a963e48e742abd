"""The world task: instructions about topics, a gold reward with a real quality term,
and length as a spurious feature (:mod:`iterdpo.toy.world` builds the model).

Prompts come in four instruction kinds over 24 topics, each topic with 4 detail words
(``garden``: rose, soil, seed, bloom)::

    describe  "Describe the garden." / "Write about the garden and its rose."   1 topic, kind tone
    compare   "Compare the garden and the ocean."                              2 topics, kind tone
    praise    "Praise the garden."                                             1 topic, kind tone (weight 1)
    warn      "Warn me about the garden."                                      1 topic, harsh tone (weight 1)

A response is a sequence of words. With ``W`` its set of distinct (lowercased) words,
``n`` its word count, ``T`` the prompt's topics and ``D(t)`` the detail words of topic t,
the gold reward is::

    cover  = mean_{t in T} ( 0.5 [t in W] + 0.25 min(|D(t) & W|, 2) )          in [0, 1]
    tone   = s_kind * w_kind * clip((|POS & W| - |NEG & W|) / 3, -1, 1)        in [-1, 1]
             s = +1 (describe, compare, praise), -1 (warn); w = 0.5 (describe, compare), 1 (praise, warn)
    rep    = 0.2 * min(#repeats of content words, 5)                           in [0, 1]   (keyword stuffing)
    off    = min(|OFF(T) & W|, 3) / 3                                           in [0, 1]   (other topics' words)
    gold   = cover + tone - rep - off                                           in [-3, 2]

where content words are the topic, detail and tone words (``n_c - |W_c|`` for the
content words' count ``n_c`` and distinct set ``W_c``; filler may repeat freely), and -1
for an empty response. Every term counts *distinct* words against fixed caps, so length
itself earns nothing: filler leaves gold unchanged, and repeating any word already
present never raises it (``rep`` grows or stays, nothing else moves). The best answers
need only 6-9 words. Length is nevertheless a spurious feature of the data: the
warm-up (SFT) responses have 4-40 words, independently of their quality, and the biased
annotator of :func:`offline_pairs` prefers the longer response in a set share of pairs.
"""

from __future__ import annotations

import math
import random

TOPICS: dict[str, list[str]] = {
    "garden": ["rose", "soil", "seed", "bloom"],
    "ocean": ["wave", "salt", "shell", "tide"],
    "forest": ["pine", "moss", "fern", "owl"],
    "city": ["street", "tower", "crowd", "bus"],
    "kitchen": ["bread", "oven", "spoon", "soup"],
    "school": ["teacher", "lesson", "desk", "chalk"],
    "music": ["drum", "melody", "guitar", "rhythm"],
    "winter": ["snow", "frost", "scarf", "ice"],
    "farm": ["cow", "barn", "hay", "tractor"],
    "river": ["bank", "stream", "bridge", "boat"],
    "mountain": ["peak", "rock", "trail", "cliff"],
    "library": ["book", "shelf", "page", "reader"],
    "desert": ["sand", "cactus", "dune", "heat"],
    "market": ["fruit", "stall", "price", "vendor"],
    "train": ["rail", "station", "ticket", "engine"],
    "space": ["star", "planet", "rocket", "orbit"],
    "island": ["palm", "beach", "coral", "lagoon"],
    "castle": ["knight", "wall", "gate", "moat"],
    "hospital": ["nurse", "doctor", "bed", "medicine"],
    "museum": ["painting", "statue", "gallery", "artist"],
    "storm": ["thunder", "lightning", "wind", "cloud"],
    "bakery": ["cake", "flour", "sugar", "pastry"],
    "harbor": ["ship", "dock", "anchor", "sailor"],
    "festival": ["lantern", "dance", "parade", "mask"],
}
POSITIVE = ["good", "kind", "bright", "happy", "warm", "calm", "lovely", "gentle", "fresh", "sweet", "clear", "brave"]
NEGATIVE = ["bad", "cruel", "dark", "sad", "cold", "angry", "ugly", "harsh", "stale", "bitter", "dull", "weak"]
FILLER = [
    "the", "a", "is", "and", "very", "quite", "near", "with", "of", "it", "there", "some", "many", "this",
    "that", "we", "you", "they", "often", "also", "just", "really", "then", "now", "here", "all", "more",
    "most", "one", "two", "every", "each", "both", "around", "about", "over", "under", "after", "before",
    "again", "still", "such", "like", "into", "from", "by", "at", "on", "so", "too",
]
KINDS = ("describe", "compare", "praise", "warn")
TEMPLATES: dict[str, list[str]] = {
    "describe": ["Describe the {a}.", "Tell me about the {a}.", "What is the {a} like?",
                 "Write about the {a} and its {d}.", "Describe the {d} of the {a}.", "Tell me about the {a}, mostly the {d}."],
    "compare": ["Compare the {a} and the {b}.", "Write about the {a} and the {b}."],
    "praise": ["Praise the {a}.", "Say something nice about the {a}.", "Praise the {d} of the {a}.", "Say something nice about the {a} and its {d}."],
    "warn": ["Warn me about the {a}.", "Say something gloomy about the {a}.", "Warn me about the {d} of the {a}.", "Say something gloomy about the {a} and its {d}."],
}
TONE = {"describe": (1, 0.5), "compare": (1, 0.5), "praise": (1, 1.0), "warn": (-1, 1.0)}  # (sign, weight)
_POS, _NEG = set(POSITIVE), set(NEGATIVE)
_OWNER = {w: t for t, ds in TOPICS.items() for w in (t, *ds)}  # topic or detail word -> its topic
_CONTENT = set(_OWNER) | _POS | _NEG


def all_prompts() -> list[dict]:
    """Every world prompt (1944) as ``{prompt, kind, topics}``, in a fixed order."""
    out = []
    for kind, templates in TEMPLATES.items():
        for tpl in templates:
            for a, details in TOPICS.items():
                if "{b}" in tpl:
                    out += [{"prompt": tpl.format(a=a, b=b), "kind": kind, "topics": [a, b]} for b in TOPICS if b != a]
                elif "{d}" in tpl:
                    out += [{"prompt": tpl.format(a=a, d=d), "kind": kind, "topics": [a]} for d in details]
                else:
                    out.append({"prompt": tpl.format(a=a), "kind": kind, "topics": [a]})
    return out


def split_prompts(seed: int = 1234, eval_size: int = 200) -> tuple[list[dict], list[dict]]:
    """The fixed train / held-out split (independent of the build seed)."""
    prompts = all_prompts()
    random.Random(seed).shuffle(prompts)
    return prompts[eval_size:], prompts[:eval_size]


_BY_TEXT: dict[str, dict] = {}


def parse_prompt(prompt: str) -> dict:
    """``{kind, topics}`` of a world prompt; any other text: kind 'describe', topics = the topic words it names."""
    if not _BY_TEXT:
        _BY_TEXT.update({p["prompt"]: p for p in all_prompts()})
    hit = _BY_TEXT.get(prompt.strip())
    if hit is not None:
        return hit
    words = [w.strip(".,!?").lower() for w in prompt.split()]
    return {"prompt": prompt, "kind": "describe", "topics": [w for w in dict.fromkeys(words) if w in TOPICS]}


def words_of(text: str) -> list[str]:
    words = [w.strip(".,!?;:").lower() for w in text.split()]
    return [w for w in words if w]


def gold_terms(prompt: str, response: str) -> dict[str, float]:
    """The terms of the gold reward (see the module docstring)."""
    info = parse_prompt(prompt)
    words = words_of(response)
    distinct = set(words)
    topics = info["topics"]
    cover = sum(0.5 * (t in distinct) + 0.25 * min(len(distinct.intersection(TOPICS[t])), 2) for t in topics) / max(len(topics), 1)
    sign, weight = TONE[info["kind"]]
    tone = sign * weight * max(-1.0, min(1.0, (len(distinct & _POS) - len(distinct & _NEG)) / 3))
    content = [w for w in words if w in _CONTENT]
    rep = 0.2 * min(len(content) - len(set(content)), 5)
    off = min(sum(1 for w in distinct if w in _OWNER and _OWNER[w] not in topics), 3) / 3
    return {"cover": cover, "tone": tone, "rep": rep, "off": off}


FEATURES = ("topic1_named", "topic1_details", "topic2_named", "topic2_details", "positive_words", "negative_words", "kind_describe",
            "kind_compare", "kind_praise", "kind_warn", "describe_x_tone", "compare_x_tone", "praise_x_tone", "warn_x_tone", "content_repeats",
            "other_topic_words", "words_per_40", "distinct_per_40", "empty")


def features(prompt: str, response: str) -> list[float]:
    """The raw counts the gold reward is a capped, clipped function of (``FEATURES``, 19 dims):
    for the prompt's first and second topic (zeros when it has one), whether it is named and
    how many of its detail words appear (uncapped); distinct positive / negative tone words;
    the instruction kind (one-hot) and its product with the tone balance (positive -
    negative) / 3; repeated content words and other topics' words (uncapped); words and
    distinct words / 40; an empty flag. Gold is a function of these (the caps, the clip, the
    kind's sign and weight are left to a learner), so a reward model on them can learn it; used
    as the embedding of active reward modelling where a policy's hidden states carry too
    little of gold."""
    info = parse_prompt(prompt)
    words = words_of(response)
    distinct = set(words)
    topics = info["topics"][:2]
    per_topic = []
    for i in range(2):
        t = topics[i] if i < len(topics) else None
        per_topic += [0.0, 0.0] if t is None else [float(t in distinct), float(len(distinct.intersection(TOPICS[t])))]
    pos, neg = len(distinct & _POS), len(distinct & _NEG)
    kinds = [float(info["kind"] == k) for k in ("describe", "compare", "praise", "warn")]
    content = [w for w in words if w in _CONTENT]
    off = sum(1 for w in distinct if w in _OWNER and _OWNER[w] not in info["topics"])
    return [*per_topic, float(pos), float(neg), *kinds, *[k * (pos - neg) / 3 for k in kinds], float(len(content) - len(set(content))),
            float(off), len(words) / 40, len(distinct) / 40, float(not words)]


def gold_reward(prompt: str, response: str) -> float:
    """The world's gold reward (module docstring); -1 for an empty response."""
    if not words_of(response):
        return -1.0
    t = gold_terms(prompt, response)
    return t["cover"] + t["tone"] - t["rep"] - t["off"]


def sft_response(rng: random.Random, info: dict, min_words: int = 4, max_words: int = 40) -> str:
    """One warm-up-style response to a prompt ``{kind, topics}``.

    Length (log-uniform in [min_words, max_words]) and a skill s ~ U(0, 1) are drawn
    independently; s sets how many topic and detail words appear, whether tone words fit
    the instruction, and how many off-topic words and repeated content words slip in.
    The content words come first (in random order), the rest of the length is filler, so
    gold is spread widely at every length.
    """
    n = round(math.exp(rng.uniform(math.log(min_words), math.log(max_words))))
    s = rng.random()
    content: list[str] = []
    for t in info["topics"]:
        if rng.random() < 0.25 + 0.7 * s:
            content.append(t)
        content += rng.sample(TOPICS[t], sum(rng.random() < s for _ in range(3)))
    sign, _ = TONE[info["kind"]]
    good, bad = (POSITIVE, NEGATIVE) if sign > 0 else (NEGATIVE, POSITIVE)
    tone = rng.randint(0, 4)
    right = sum(rng.random() < 0.15 + 0.8 * s for _ in range(tone))
    content += rng.sample(good, right) + rng.sample(bad, tone - right)
    others = [t for t in TOPICS if t not in info["topics"]]
    for _ in range(sum(rng.random() < 0.4 * (1 - s) for _ in range(2))):
        other = rng.choice(others)
        content.append(rng.choice(TOPICS[other]) if rng.random() < 0.5 else other)
    rng.shuffle(content)
    content = content[:n]
    repeats = min(sum(rng.random() < 0.5 * (1 - s) for _ in range(4)), n - len(content)) if content else 0
    content += [rng.choice(content) for _ in range(repeats)]
    rng.shuffle(content)
    return " ".join(content + rng.choices(FILLER, k=n - len(content)))


def offline_pairs(seed: int = 0, length_bias: float = 0.3, noise: float = 0.0, size: int | None = None,
                  prompts: list[dict] | None = None) -> list[dict]:
    """An offline preference set labelled by a biased, noisy annotator.

    Per prompt (the train split, cycled to ``size`` pairs) two warm-up-style responses
    with different gold rewards and different lengths. A seeded ``round(length_bias *
    size)`` of the pairs are labelled by length (the longer one chosen, whatever its
    quality); the others by gold. Then ``round(noise * size)`` pairs, chosen as in
    :func:`iterdpo.annotation.noise.swap_indices`, get chosen and rejected swapped.

    Rows: ``prompt, chosen, rejected, gold_chosen, gold_rejected, len_chosen, len_rejected
    (words), length_biased, swapped``.
    """
    from iterdpo.annotation.noise import swap_indices

    if not 0.0 <= length_bias <= 1.0:
        raise ValueError(f"length_bias must lie in [0, 1], got {length_bias}")
    prompts = prompts if prompts is not None else split_prompts()[0]
    size = len(prompts) if size is None else size
    rng = random.Random(f"world-offline:{seed}")
    biased = set(rng.sample(range(size), round(length_bias * size)))
    rows = []
    for i in range(size):
        p = prompts[i % len(prompts)]
        while True:  # a pair that both gold and length can order
            a, b = sft_response(rng, p), sft_response(rng, p)
            ga, gb = gold_reward(p["prompt"], a), gold_reward(p["prompt"], b)
            la, lb = len(words_of(a)), len(words_of(b))
            if ga != gb and la != lb:
                break
        a_wins = la > lb if i in biased else ga > gb
        (c, gc, lc), (r, gr, lr) = ((a, ga, la), (b, gb, lb)) if a_wins else ((b, gb, lb), (a, ga, la))
        rows.append({"prompt": p["prompt"], "chosen": c, "rejected": r, "gold_chosen": gc, "gold_rejected": gr,
                     "len_chosen": lc, "len_rejected": lr, "length_biased": i in biased, "swapped": False})
    for i in swap_indices(size, noise, seed):
        r = rows[i]
        r.update(chosen=r["rejected"], rejected=r["chosen"], gold_chosen=r["gold_rejected"], gold_rejected=r["gold_chosen"],
                 len_chosen=r["len_rejected"], len_rejected=r["len_chosen"], swapped=True)
    return rows

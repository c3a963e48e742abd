"""A lexical reward model: a linear model over the words of a response, fitted to labels.

What it sees, per (prompt x, response y), with ``words(t)`` = the lower-cased ``[a-z']+``
words of t::

    w_v       = 1 if vocabulary word v occurs in y               (presence, repeats count once)
    log_words = log(1 + |words(y)|)
    type_token= distinct words(y) / |words(y)|                    (1 for an empty answer)
    topic_any = 1 if y contains a content word of x               (content word: a word of x that occurs in
    topic_share = share of x's content words that y contains       at most max_df of the fitting prompts, so
                                                                   instruction words like "write", "review" are not)
    r(x, y)   = bias + sum_v weight_v * w_v + sum_f weight_f * f  (f: the four features above)

It is fitted by ridge regression (closed form, the bias unpenalised) on ``(prompt, response,
target)`` triples, e.g. a task's gold reward on a model's own answers, with the ridge
strength chosen by prompt-grouped cross-validation of within-prompt pairwise agreement. The
vocabulary is every word found in at least ``min_count`` fitted responses; a word it never saw
weighs nothing. So it is a real, imperfect proxy of whatever labelled it: linear where the
labeller may saturate, blind to word order and negation, and it knows only the words and
prompts it was fitted on.

Stored as one JSON file, ``<folder>/lexical_reward.json``; :class:`LexicalRewardAnnotator`
(``annotate.annotator: reward_model`` with ``annotate.reward_model`` = that folder) labels pairs
by ``r(x, a) - r(x, b)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

FILE = "lexical_reward.json"
KIND = "iterdpo-lexical-reward"
WORD = re.compile(r"[a-z']+")
FEATURES = ("log_words", "type_token", "topic_any", "topic_share")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _stem(word: str) -> str:
    """Singular-ish form for matching a prompt's word in an answer ("boots" ~ "boot")."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def is_lexical(path: str | Path) -> bool:
    """Whether ``path`` is a lexical reward model's folder (or its JSON file)."""
    path = Path(path)
    return path.name == FILE and path.is_file() or (path / FILE).is_file()


class LexicalRewardModel:
    """``r(x, y)`` of the module docstring; build with :meth:`fit` or :meth:`load`."""

    def __init__(self, *, vocab: dict[str, float], feature_weights: dict[str, float], bias: float,
                 instruction_words: Sequence[str], meta: dict | None = None):
        self.vocab = vocab
        self.feature_weights = feature_weights
        self.bias = bias
        self.instruction_words = frozenset(instruction_words)
        self.meta = meta or {}

    # --- features ---------------------------------------------------------------------

    def content_words(self, prompt: str) -> set[str]:
        return {_stem(w) for w in words(prompt) if w not in self.instruction_words and len(w) > 2}

    def features(self, prompt: str, response: str) -> dict[str, float]:
        """The four global features of (prompt, response)."""
        ws = words(response)
        stems = {_stem(w) for w in ws}
        content = self.content_words(prompt)
        hit = len(content & stems)
        return {
            "log_words": math.log1p(len(ws)),
            "type_token": len(set(ws)) / len(ws) if ws else 1.0,
            "topic_any": 1.0 if hit else 0.0,
            "topic_share": hit / len(content) if content else 0.0,
        }

    def score_one(self, prompt: str, response: str) -> float:
        f = self.features(prompt, response)
        return (self.bias + sum(self.vocab.get(w, 0.0) for w in set(words(response)))
                + sum(self.feature_weights[k] * f[k] for k in FEATURES))

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """r(x, y) of each (prompt, response), in input order."""
        return [self.score_one(x, y) for x, y in zip(prompts, responses, strict=True)]

    # --- fitting ----------------------------------------------------------------------

    @classmethod
    def fit(cls, prompts: list[str], responses: list[str], targets: list[float], *, min_count: int = 2,
            max_df: float = 0.1, ridges: Sequence[float] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0), folds: int = 5,
            seed: int = 0) -> LexicalRewardModel:
        """Ridge regression of ``targets`` on the features; ridge strength by grouped cross-validation.

        ``max_df``: a prompt word found in more than this share of the distinct fitting prompts is an
        instruction word, not content. Folds split by prompt, so a prompt's answers are never on
        both sides; the criterion is within-prompt pairwise agreement with ``targets``.
        """
        import random

        import numpy as np

        if not (len(prompts) == len(responses) == len(targets)) or not prompts:
            raise ValueError(f"fit needs equally long, non-empty prompts/responses/targets (got {len(prompts)}, "
                             f"{len(responses)}, {len(targets)})")
        distinct = sorted(set(prompts))
        df: dict[str, int] = {}
        for p in distinct:
            for w in set(words(p)):
                df[w] = df.get(w, 0) + 1
        instruction = sorted(w for w, c in df.items() if c > max_df * len(distinct))
        counts: dict[str, int] = {}
        for y in responses:
            for w in set(words(y)):
                counts[w] = counts.get(w, 0) + 1
        vocab = sorted(w for w, c in counts.items() if c >= min_count)
        probe = cls(vocab={}, feature_weights=dict.fromkeys(FEATURES, 0.0), bias=0.0, instruction_words=instruction)
        index = {w: i for i, w in enumerate(vocab)}
        X = np.zeros((len(responses), len(vocab) + len(FEATURES)))  # [N, V + 4]
        for n, (x, y) in enumerate(zip(prompts, responses, strict=True)):
            for w in set(words(y)):
                if w in index:
                    X[n, index[w]] = 1.0
            f = probe.features(x, y)
            X[n, len(vocab):] = [f[k] for k in FEATURES]
        t = np.asarray(targets, dtype=np.float64)

        def solve(rows: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
            mu_x, mu_t = X[rows].mean(0), t[rows].mean()  # centring leaves the bias unpenalised
            A, y = X[rows] - mu_x, t[rows] - mu_t
            if A.shape[0] < A.shape[1]:  # fewer answers than features: the same solution from the N x N system
                w = A.T @ np.linalg.solve(A @ A.T + ridge * np.eye(A.shape[0]), y)
            else:
                w = np.linalg.solve(A.T @ A + ridge * np.eye(A.shape[1]), A.T @ y)
            return w, float(mu_t - mu_x @ w)

        order = distinct[:]
        random.Random(seed).shuffle(order)
        fold_of = {p: i % folds for i, p in enumerate(order)}
        fold = np.array([fold_of[p] for p in prompts])
        by_prompt: dict[str, list[int]] = {}
        for n, p in enumerate(prompts):
            by_prompt.setdefault(p, []).append(n)
        pairs = [(i, j) for rows in by_prompt.values() for a, i in enumerate(rows) for j in rows[a + 1:] if t[i] != t[j]]
        cv = {}
        for ridge in ridges:
            pred = np.zeros(len(t))
            for k in range(folds):
                w, b = solve(np.flatnonzero(fold != k), ridge)
                held = np.flatnonzero(fold == k)
                pred[held] = X[held] @ w + b
            cv[ridge] = float(sum((pred[i] > pred[j]) == (t[i] > t[j]) for i, j in pairs) / max(1, len(pairs)))
        best = max(ridges, key=lambda r: (cv[r], r))  # ties: the stronger ridge
        w, b = solve(np.arange(len(t)), best)
        meta = {"fitted_on": len(t), "prompts": len(distinct), "vocab": len(vocab), "ridge": best,
                "cv_pairwise_agreement": {str(r): round(a, 4) for r, a in cv.items()}, "cv_pairs": len(pairs)}
        return cls(vocab={v: float(w[i]) for i, v in enumerate(vocab)},
                   feature_weights={k: float(w[len(vocab) + i]) for i, k in enumerate(FEATURES)}, bias=b,
                   instruction_words=instruction, meta=meta)

    # --- files ------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / FILE
        path.write_text(json.dumps({"kind": KIND, "version": 1, "bias": self.bias, "feature_weights": self.feature_weights,
                                    "instruction_words": sorted(self.instruction_words), "meta": self.meta,
                                    "vocab": self.vocab}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> LexicalRewardModel:
        """From a folder holding ``lexical_reward.json`` (or the file); ValueError naming the file and field."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: lexical reward model not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e.msg} (line {e.lineno})") from None
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise ValueError(f"{path}, field 'kind': expected {KIND!r}")
        for field, typ in (("vocab", dict), ("feature_weights", dict), ("bias", (int, float)), ("instruction_words", list)):
            if not isinstance(data.get(field), typ):
                raise ValueError(f"{path}, field {field!r}: missing or of the wrong type")
        missing = [k for k in FEATURES if not isinstance(data["feature_weights"].get(k), (int, float))]
        if missing:
            raise ValueError(f"{path}, field 'feature_weights': no number for {', '.join(missing)}")
        bad = next((w for w, v in data["vocab"].items() if not isinstance(v, (int, float))), None)
        if bad is not None:
            raise ValueError(f"{path}, field 'vocab': the weight of {bad!r} is not a number")
        return cls(vocab={w: float(v) for w, v in data["vocab"].items()},
                   feature_weights={k: float(data["feature_weights"][k]) for k in FEATURES}, bias=float(data["bias"]),
                   instruction_words=data["instruction_words"], meta=data.get("meta"))


def pairwise_agreement(model: LexicalRewardModel | object, pairs: list[tuple[str, str, str, float, float]]) -> dict:
    """Share of (prompt, a, b, target_a, target_b) pairs with target_a != target_b that ``model.score`` orders
    like the targets (a score tie counts as disagreement)."""
    decided = [p for p in pairs if p[3] != p[4]]
    if not decided:
        return {"pairs": 0, "agreement": math.nan}
    sa = model.score([p[0] for p in decided], [p[1] for p in decided])
    sb = model.score([p[0] for p in decided], [p[2] for p in decided])
    agree = sum((x > y) == (p[3] > p[4]) and x != y for x, y, p in zip(sa, sb, decided, strict=True))
    return {"pairs": len(decided), "agreement": agree / len(decided)}


class LexicalRewardAnnotator:
    """Annotator over a :class:`LexicalRewardModel`: ``compare(x, a, b) = r(x, a) - r(x, b)``."""

    name = "reward_model"

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.model = LexicalRewardModel.load(path)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return self.model.score(prompts, responses)

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        n = len(prompts)
        s = self.score(prompts + prompts, a + b)
        return [s[i] - s[n + i] for i in range(n)]

"""Margin-based selection before annotation (Yang et al., 2024; seed 001).

Two levels, applied to the scored responses of one iteration:

1. *Instance level*: among the N(N-1)/2 pairs of one prompt's responses keep one pair,
   the one with the ``smallest`` or ``largest`` absolute implicit-reward margin
   ``|r(x,a) - r(x,b)|``, or ``random`` (the first two responses, as in the paper).
2. *Corpus level*: of those per-prompt pairs keep ``ceil(corpus_fraction * count)``,
   again by ``smallest``, ``largest`` or ``random`` margin.

Margins use summed rewards (``sum``, the paper's better variant) or length-normalised
rewards (``length``). Unlabelled pairs have no orientation yet, hence the absolute value.
Pairs of identical texts are never formed: they carry no preference.
"""

from __future__ import annotations

import math
from itertools import combinations

import pyarrow as pa

from iterdpo import records
from iterdpo.selection.base import tie_key

ORDERS = ("smallest", "largest", "random")


def _pick(pairs: list[dict], how: str, k: int, seed: int) -> list[dict]:
    """The k pairs with the smallest / largest margin, or k seeded-random ones."""
    tie = lambda p: tie_key(seed, p["a_id"], p["b_id"])  # noqa: E731
    if how == "smallest":
        order = sorted(pairs, key=lambda p: (p["margin"], tie(p)))
    elif how == "largest":
        order = sorted(pairs, key=lambda p: (-p["margin"], tie(p)))
    else:
        order = sorted(pairs, key=tie)
    return order[:k]


def select_margin(
    scored: pa.Table,
    *,
    instance: str = "smallest",
    corpus: str = "smallest",
    corpus_fraction: float = 0.5,
    margin: str = "sum",
    seed: int = 0,
) -> pa.Table:
    """SCORED table -> CANDIDATES table (one row per kept pair, ``a_id < b_id``)."""
    if instance not in ORDERS or corpus not in ORDERS:
        raise ValueError(f"instance and corpus must be one of {ORDERS}")
    col = {"sum": "reward", "length": "reward_norm"}[margin]
    by_prompt: dict[str, list[dict]] = {}
    for r in scored.select(["prompt_id", "completion_id", "completion", col]).to_pylist():
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    per_prompt = []
    for pid, resp in by_prompt.items():
        resp.sort(key=lambda r: r["completion_id"])
        pairs = [
            {"prompt_id": pid, "a_id": a["completion_id"], "b_id": b["completion_id"], "margin": abs(a[col] - b[col])}
            for a, b in combinations(resp, 2)
            if a["completion"] != b["completion"]
        ]
        if not pairs:
            continue
        if instance == "random":  # the first two (distinct) responses: samples are i.i.d.
            per_prompt.append(pairs[0])
        else:
            per_prompt.extend(_pick(pairs, instance, 1, seed))
    keep = math.ceil(corpus_fraction * len(per_prompt))
    chosen = _pick(per_prompt, corpus, keep, seed)
    name = f"margin:{instance}/{corpus}@{corpus_fraction}"
    chosen.sort(key=lambda p: (p["prompt_id"], p["a_id"]))
    return records.from_rows([{**p, "selector": name} for p in chosen], records.CANDIDATES)

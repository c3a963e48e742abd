"""A task's gold reward as an annotator: a noiseless oracle.

``GOLD_REWARDS`` names the programmatic gold rewards: ``toy`` (:func:`iterdpo.toy.task.gold_reward`)
``world`` (:func:`iterdpo.toy.world_task.gold_reward`) and ``reviews``
(:func:`iterdpo.real.reviews.gold_reward`, SmolLM2's task). ``annotate.gold`` picks one for
the gold annotator and for evaluation's gold metrics.
"""

from __future__ import annotations

from collections.abc import Callable

from iterdpo.real import reviews
from iterdpo.toy import task, world_task

GOLD_REWARDS: dict[str, Callable[[str, str], float]] = {
    "toy": task.gold_reward, "world": world_task.gold_reward, "reviews": reviews.gold_reward,
}


def gold_reward_fn(name: str) -> Callable[[str, str], float]:
    if name not in GOLD_REWARDS:
        raise ValueError(f"unknown gold reward {name!r}; available: {sorted(GOLD_REWARDS)}")
    return GOLD_REWARDS[name]


class GoldAnnotator:
    """Prefers the response with the higher gold reward: ``compare = gold(a) - gold(b)``."""

    name = "gold"

    def __init__(self, gold: str = "toy"):
        self.gold = gold_reward_fn(gold)

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        return [self.gold(x, ya) - self.gold(x, yb) for x, ya, yb in zip(prompts, a, b, strict=True)]

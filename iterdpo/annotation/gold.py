"""The toy task's gold reward as an annotator: a noiseless oracle."""

from __future__ import annotations

from iterdpo.toy.task import gold_reward


class GoldAnnotator:
    """Prefers the response with the higher gold reward: ``compare = gold(a) - gold(b)``."""

    name = "gold"

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        return [gold_reward(x, ya) - gold_reward(x, yb) for x, ya, yb in zip(prompts, a, b, strict=True)]

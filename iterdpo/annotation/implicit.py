"""Self-labelling (SeRA, Ko et al.): the policy's own implicit reward orients the pair.

``compare_rows(a, b) = a[column] - b[column]`` on the SCORED rows, with ``column`` one of
``reward`` = beta * (log pi(y|x) - log ref(y|x)) (the default), ``reward_norm`` (per token)
or ``reward_simpo`` = beta * log pi(y|x) / |y| (for SimPO, which has no reference). The
chosen response is the one with the higher implicit reward. No outside labeller is
asked, so this annotator costs nothing and can bootstrap preferences on any prompt.

In iteration 1 with a reference equal to the policy every implicit reward is 0, so every
pair is a tie: SeRA trains iteration 1 on offline labels instead. Use it from iteration 2
on, or with ``annotate.ties: random`` only for plumbing tests.
"""

from __future__ import annotations


class ImplicitAnnotator:
    name = "implicit"

    def __init__(self, column: str = "reward"):
        if column not in ("reward", "reward_norm", "reward_simpo"):
            raise ValueError(f"implicit annotator: unknown column {column!r}; use reward, reward_norm or reward_simpo")
        self.column = column

    def compare_rows(self, a: list[dict], b: list[dict]) -> list[float | None]:
        return [ra[self.column] - rb[self.column] for ra, rb in zip(a, b, strict=True)]

    def compare(self, prompts: list[str], a: list[str], b: list[str]) -> list[float | None]:
        raise TypeError("the implicit annotator needs scored rows (compare_rows); it cannot judge plain text")

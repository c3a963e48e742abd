"""Annotation budget schedules over iterations (Yang et al., 2024; seed 001, Sec. 5).

The paper splits 30k prompts over 3 iterations as ``increase`` (5k, 10k, 15k),
``constant`` (10k x 3) or ``decrease`` (15k, 10k, 5k) and finds
``decrease >= constant > increase``. For T iterations and a total budget B::

    increase  weights 1, 2, ..., T      count_t ~ B * t / sum(1..T)
    constant  weights 1, ..., 1         count_t ~ B / T
    decrease  weights T, T-1, ..., 1

rounded by largest remainder so the counts sum to exactly B (earlier iterations win
ties). An explicit list is returned as given. Pure python: the config imports this.
"""

from __future__ import annotations

SCHEDULES = ("increase", "constant", "decrease")


def budget_schedule(schedule: str | list[int], total: int | None = None, iterations: int | None = None) -> list[int]:
    """Per-iteration prompt counts.

    Args:
        schedule: ``increase`` | ``constant`` | ``decrease``, or an explicit list of counts.
        total: total prompts over all iterations (named schedules only).
        iterations: number of iterations T (named schedules only).

    >>> budget_schedule("decrease", 30000, 3)
    [15000, 10000, 5000]
    """
    if isinstance(schedule, list):
        if not schedule or any(int(c) < 1 for c in schedule):
            raise ValueError(f"a budget list needs counts >= 1, got {schedule}")
        return [int(c) for c in schedule]
    if schedule not in SCHEDULES:
        raise ValueError(f"budget schedule must be one of {SCHEDULES} or a list, got {schedule!r}")
    if total is None or iterations is None or iterations < 1:
        raise ValueError("a named budget schedule needs total and iterations >= 1")
    if total < iterations:
        raise ValueError(f"budget total {total} is smaller than the {iterations} iterations (each needs >= 1 prompt)")
    t = range(1, iterations + 1)
    weights = {"increase": list(t), "constant": [1] * iterations, "decrease": [iterations + 1 - i for i in t]}[schedule]
    wsum = sum(weights)
    exact = [total * w / wsum for w in weights]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(iterations), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i in range(iterations):  # every iteration gets at least one prompt
        if counts[i] == 0:
            j = max(range(iterations), key=lambda k: counts[k])
            counts[j] -= 1
            counts[i] = 1
    # rounding and the >= 1 fix can leave a tie out of order (2, 2, 1, 0 -> 1, 2, 1, 1):
    # the schedule's direction is its definition, so restore it
    if schedule != "constant":
        counts.sort(reverse=schedule == "decrease")
    return counts

"""Label noise for robustness experiments (SeRA swaps 20% / 40% of the labels).

``swap_indices(n, fraction, seed)`` picks exactly ``round(fraction * n)`` distinct pairs
out of ``n`` with a seeded RNG; :func:`iterdpo.annotation.annotate` swaps chosen and
rejected of those pairs and records the count (and the swapped ids) in its stats.
The choice depends only on (n, fraction, seed), so a rerun swaps the same pairs, and a
larger fraction with the same seed swaps a superset of a smaller one (the picks are a
prefix of one seeded permutation), so noise levels of one sweep are nested.
"""

from __future__ import annotations

import random


def swap_indices(n: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of the ``round(fraction * n)`` pairs whose labels are swapped."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"noise fraction must lie in [0, 1], got {fraction}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    k = round(fraction * n)
    if k == 0:
        return []
    order = list(range(n))
    random.Random(f"noise:{seed}").shuffle(order)
    return sorted(order[:k])

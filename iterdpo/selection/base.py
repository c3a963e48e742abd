"""What every selector shares: the seeded tie-breaker."""

from __future__ import annotations

import hashlib


def tie_key(seed: int, *ids: str) -> str:
    """Seeded, order-independent tie-breaker: a random order that ignores input row order."""
    return hashlib.sha1(":".join((str(seed), *ids)).encode()).hexdigest()

"""Selectors: scored completions -> candidate pairs worth annotating.

Every selector is a plain function registered in :data:`SELECTORS` and named in the
config. Given the same inputs and seed it returns the same selection whatever the input
row order: ties are broken by :func:`iterdpo.selection.base.tie_key`, a seeded hash of
the pair's ids.
"""

from __future__ import annotations

from iterdpo.selection.margin import select_margin

SELECTORS = {"margin": select_margin}

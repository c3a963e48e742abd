"""Hypothesis strategies shared by the selector tests: small SCORED tables with ties."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import strategies as st

from iterdpo import records

REWARDS = st.sampled_from([-1.0, -0.5, 0.0, 0.0, 0.25, 0.5, 1.0, 2.0])  # repeats -> ties


@st.composite
def scored_tables(draw, max_prompts: int = 8, max_n: int = 6, min_n: int = 1) -> pa.Table:
    """A SCORED table: 1..max_prompts prompts with min_n..max_n responses each.

    Texts come from a 3-letter alphabet (so identical responses occur), rewards from a
    small set (so margins tie), ids are shuffled so that row order carries no meaning.
    """
    rows = []
    for p in range(draw(st.integers(1, max_prompts))):
        pid = f"p{draw(st.integers(0, 10**6)):07d}x{p}"
        for k in range(draw(st.integers(min_n, max_n))):
            r = draw(REWARDS)
            n = draw(st.integers(1, 5))
            rows.append(
                dict(prompt_id=pid, completion_id=f"{pid}-{k:04d}", prompt="q", completion=draw(st.sampled_from("abc")) * n,
                     num_tokens=n, finish_reason="stop", policy_logp=-float(n) + r, ref_logp=-float(n), reward=r,
                     reward_norm=r / n, reward_simpo=-1.0 / n)
            )
    return records.from_rows(rows, records.SCORED)


def shuffled(table: pa.Table, perm: list[int]) -> pa.Table:
    return table.take(pa.array(perm, pa.int64()))


def same(a: pa.Table, b: pa.Table) -> bool:
    return a.to_pylist() == b.to_pylist()

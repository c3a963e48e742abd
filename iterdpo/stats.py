"""Small-sample statistics for paired comparisons: Student-t intervals, Holm, power.

Everything an evaluation or a benchmark verdict needs, in pure Python (no scipy in the
core dependencies):

- :func:`t_quantile` -- the Student-t quantile, from the regularised incomplete beta
  function ``I_x(a, b)`` (continued fraction, Lentz's method) inverted by bisection.
- :func:`paired_interval` -- mean of paired differences ``d_i = x_i - y_i`` with its
  two-sided ``1 - alpha`` interval ``mean ± t_{1-alpha/2, n-1} * sd / sqrt(n)`` and the
  two-sided p-value of ``mean = 0``.
- :func:`holm` -- Holm's step-down adjustment of p-values, which keeps the family-wise
  error rate over several claims at ``alpha``.
- :func:`detectable_effect` -- the smallest true mean difference a paired t-test with
  ``n`` pairs and standard deviation ``sd`` detects with the given power, from the
  noncentral-t approximation ``delta = (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (``t_quantile(0.975, 3)`` = 3.1824)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # heavy tails at df = 1: the 0.999 quantile is ~318
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PairedInterval:
    """A paired comparison: ``mean`` of ``d_i = x_i - y_i`` over ``n`` pairs."""

    mean: float
    low: float  # two-sided interval of the mean at ``level``
    high: float
    sd: float  # sample sd of the differences (ddof 1)
    n: int
    p_value: float  # two-sided, paired t-test of mean = 0
    level: float = 0.95

    def as_dict(self, prefix: str) -> dict:
        """Flat, JSON-safe fields ``<prefix>``, ``<prefix>_ci95`` [low, high], ``<prefix>_se``, ``<prefix>_n``, ``<prefix>_p``."""
        tag = f"ci{round(self.level * 100)}"

        def safe(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            prefix: safe(self.mean),
            f"{prefix}_{tag}": [safe(self.low), safe(self.high)],
            f"{prefix}_se": safe(self.sd / math.sqrt(self.n)) if self.n else None,
            f"{prefix}_n": self.n,
            f"{prefix}_p": safe(self.p_value),
        }


def paired_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> PairedInterval:
    """Mean of ``x_i - y_i`` with its Student-t interval; NaN bounds with fewer than 2 pairs."""
    if len(x) != len(y):
        raise ValueError(f"paired samples differ in length: {len(x)} vs {len(y)}")
    diffs = [a - b for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    n = len(diffs)
    if n == 0:
        return PairedInterval(math.nan, math.nan, math.nan, math.nan, 0, math.nan, level)
    mean = sum(diffs) / n
    if n == 1:
        return PairedInterval(mean, math.nan, math.nan, math.nan, 1, math.nan, level)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0.0:  # every difference equal: the interval is the point
        p = 1.0 if mean == 0.0 else 0.0
        return PairedInterval(mean, mean, mean, 0.0, n, p, level)
    half = t_quantile(0.5 + level / 2.0, n - 1) * se
    p = 2.0 * (1.0 - t_cdf(abs(mean) / se, n - 1))
    return PairedInterval(mean, mean - half, mean + half, sd, n, min(1.0, max(0.0, p)), level)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p times (m - i + 1), made monotone."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test detects with ``power``.

    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)``; NaN with fewer than 2 pairs.
    """
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (t_quantile(1.0 - alpha / 2.0, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)

"""Statistics over seeds for the bench report: mean, sample std, Student-t intervals, paired differences.

Pure Python: the Student t distribution comes from the regularized incomplete
beta function (the continued fraction of Numerical Recipes, section 6.4).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CONFIDENCE",
    "SeedSummary",
    "paired_differences",
    "student_t_cdf",
    "student_t_quantile",
    "summarize",
]

#: Confidence level of the report's intervals.
CONFIDENCE = 0.95
_TINY = 1e-300
_MAX_TERMS = 1000


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method (converges for x < (a+1)/(a+b+2))."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    fraction = d
    for m in range(1, _MAX_TERMS + 1):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for term in (even, odd):
            d = 1.0 + term * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + term / c
            c = c if abs(c) > _TINY else _TINY
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return fraction
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}): no convergence in {_MAX_TERMS} terms")


def _regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _regularized_incomplete_beta(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t distribution with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    tail = 0.5 * _regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=256)
def student_t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``student_t_quantile(0.975, 2)`` = 4.303).

    Found by bisection on :func:`student_t_cdf` to about 1e-12.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * high:
        middle = (low + high) / 2.0
        low, high = (middle, high) if student_t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2.0


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample standard deviation and confidence interval ``(low, high)`` of the mean of values (one per seed).

    ``std`` and ``interval`` are None for a single value.
    """

    n: int
    mean: float
    std: float | None
    interval: tuple[float, float] | None

    @property
    def covers_zero(self) -> bool:
        """True when there is an interval and 0 lies in it (a difference that is not significant)."""
        return self.interval is not None and self.interval[0] <= 0.0 <= self.interval[1]


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedSummary:
    """Mean, sample std and the Student-t interval ``mean ± t((1 + confidence) / 2, n - 1) std / sqrt(n)``.

    :raises ValueError: for no values.
    """
    if not values:
        raise ValueError("no values to summarize")
    n, mean = len(values), statistics.fmean(values)
    if n == 1:
        return SeedSummary(1, mean, None, None)
    std = statistics.stdev(values)
    half = student_t_quantile((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n)
    return SeedSummary(n, mean, std, (mean - half, mean + half))


def paired_differences(treated: Mapping[int, float], baseline: Mapping[int, float]) -> list[float]:
    """``treated[seed] - baseline[seed]`` for every seed both have, in seed order."""
    return [treated[seed] - baseline[seed] for seed in sorted(treated.keys() & baseline.keys())]

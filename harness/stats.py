"""Statistics over seeds: Student-t confidence intervals, Welch's t-test against the best method,
and whether (and how fast) each seed solved its task.

A handful of seeds is not a distribution: with one seed there is no interval, and the test is
only run with at least `MIN_SEEDS_FOR_TEST` seeds on each side, otherwise it reports that none
was possible rather than a p-value nobody should read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95              # confidence level of every interval
ALPHA = 0.05              # significance level of the test against the best method
MIN_SEEDS_FOR_TEST = 3    # per side


def _clean(values) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean over seeds; low = high = nan with
    fewer than two values. Identical values give a zero-width interval."""
    a = _clean(values)
    if len(a) == 0:
        return np.nan, np.nan, np.nan
    mean = float(a.mean())
    if len(a) < 2:
        return mean, np.nan, np.nan
    sem = float(stats.sem(a))
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(level, len(a) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def mean_ci_columns(table: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mean_ci of each column of `table` [seeds, points] (nan entries ignored), for curve bands."""
    out = np.array([mean_ci(col[np.isfinite(col)], level) for col in np.asarray(table, float).T])
    if out.size == 0:
        return np.array([]), np.array([]), np.array([])
    return out[:, 0], out[:, 1], out[:, 2]


@dataclass(frozen=True)
class Comparison:
    """Welch's t-test of one method's scores against the best method's."""

    p_value: float | None     # None when no test was possible
    significant: bool | None  # p < alpha; None when no test was possible
    reason: str = ""          # why no test was possible


def welch(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA,
          min_seeds: int = MIN_SEEDS_FOR_TEST) -> Comparison:
    """Welch's unequal-variance t-test of the means of `a` and `b`, two-sided."""
    a, b = _clean(a), _clean(b)
    if min(len(a), len(b)) < min_seeds:
        return Comparison(None, None, f"fewer than {min_seeds} seeds")
    if np.ptp(a) == 0 and np.ptp(b) == 0:   # both samples constant: the t statistic is undefined
        return Comparison(None, None, "no spread within either method")
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Comparison(p, bool(p < alpha))


def reached(score: float | None, threshold: float | None, higher_is_better: bool) -> bool:
    if score is None or threshold is None or not np.isfinite(score):
        return False
    return score >= threshold if higher_is_better else score <= threshold


def sequences_to_solve(curve: list[dict], threshold: float | None, higher_is_better: bool) -> float | None:
    """Training sequences seen at the first evaluation whose score reaches the threshold."""
    for point in curve:
        if reached(point.get("score"), threshold, higher_is_better):
            return float(point["sequences"])
    return None


def median_or_nan(values) -> float:
    a = _clean(values)
    return float(np.median(a)) if len(a) else np.nan

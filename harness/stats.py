"""Statistics over seeds: intervals of the mean that stay inside what a metric can take, exact
intervals of solved fractions, and the test that decides which method of a group is best.

A handful of seeds is not a distribution. With fewer than `MIN_SEEDS` seeds there is no interval
and no test: tables show the seeds' values instead (a Student-t interval over two seeds has a
multiplier of 12.7 and describes no seed).

- Interval of a mean score: Student-t (`scipy.stats.t`), intersected with the metric's range
  (accuracy in [0, 1]; MSE, normalised MSE and bits >= 0). The true mean lies in that range, so
  the intersection covers it whenever the t interval does: the coverage is unchanged.
- Solved fraction k/n: Clopper-Pearson ("exact") interval of a binomial proportion
  (`scipy.stats.binomtest(k, n).proportion_ci(method="exact")`).
- Verdict within a group (same task, horizon and model): the row with the best mean among rows
  with at least `MIN_SEEDS` seeds is the top; every other such row is compared with it by Welch's
  two-sided t-test on the seeds' final scores (`scipy.stats.ttest_ind(equal_var=False)`), and the
  p-values of the group are adjusted by Holm's step-down procedure (family-wise error `ALPHA`; scipy
  1.17 has no Holm: `false_discovery_control` does Benjamini-Hochberg/Yekutieli only). A row is
  `worse` when its adjusted p is below `ALPHA`, otherwise `tied`; the top is `best` only when every
  other row of its group is `worse`, `tied` when some row is tied with it. Several methods all at
  1.000 are therefore all `tied`, none `best`. Solved fractions are not tested: with three seeds
  per side Fisher's exact test cannot reach p < 0.05 (3/3 against 0/3 gives p = 0.1).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95              # confidence level of every interval
ALPHA = 0.05              # family-wise significance level of the verdicts of one group
MIN_SEEDS = 3             # no interval and no test from fewer seeds

# what a score can take, by the records' `metric`; anything else is unbounded
RANGES = {"accuracy": (0.0, 1.0), "mse": (0.0, np.inf), "nmse": (0.0, np.inf), "bits": (0.0, np.inf)}
COSINE_RANGE = (-1.0, 1.0)
UNBOUNDED = (-np.inf, np.inf)


def metric_range(metric: str | None) -> tuple[float, float]:
    """(low, high) a score of this kind can take."""
    return RANGES.get(metric or "", UNBOUNDED)


def _clean(values) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return a[np.isfinite(a)]


def mean_ci(values: Sequence[float], level: float = LEVEL,
            bounds: tuple[float, float] = UNBOUNDED) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean over seeds, intersected with `bounds`;
    low = high = nan with fewer than MIN_SEEDS values. Identical values give a zero-width interval."""
    a = _clean(values)
    if len(a) == 0:
        return np.nan, np.nan, np.nan
    mean = float(a.mean())
    if len(a) < MIN_SEEDS:
        return mean, np.nan, np.nan
    sem = float(stats.sem(a))
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(level, len(a) - 1, loc=mean, scale=sem)
    return mean, float(np.clip(low, *bounds)), float(np.clip(high, *bounds))


def mean_ci_columns(table: np.ndarray, level: float = LEVEL,
                    bounds: tuple[float, float] = UNBOUNDED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mean_ci of each column of `table` [seeds, points] (nan entries ignored), for curve bands."""
    out = np.array([mean_ci(col[np.isfinite(col)], level, bounds) for col in np.asarray(table, float).T])
    if out.size == 0:
        return np.array([]), np.array([]), np.array([])
    return out[:, 0], out[:, 1], out[:, 2]


def geometric_ci_columns(table: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geometric mean of each column of positive values `table` [seeds, points] with the Student-t
    interval of the mean of the logs, exponentiated (always positive); nan where a column has a
    non-positive or missing entry, no interval with fewer than MIN_SEEDS seeds. For quantities that
    span decades across seeds, where one seed would dominate an arithmetic mean."""
    table = np.atleast_2d(np.asarray(table, float))
    positive = np.all(np.isfinite(table) & (table > 0), axis=0)
    logs = np.log(np.where(positive, table, 1.0))
    mean, low, high = mean_ci_columns(logs, level)
    gmean, low, high = np.exp(mean), np.exp(low), np.exp(high)
    return tuple(np.where(positive, v, np.nan) for v in (gmean, low, high))


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion k/n; nan with n = 0."""
    if n <= 0:
        return np.nan, np.nan
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Comparison:
    """Welch's t-test of one method's scores against another's."""

    p_value: float | None     # None when no test was possible
    significant: bool | None  # p < alpha; None when no test was possible
    reason: str = ""          # why no test was possible, or how a degenerate case was decided


def welch(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA,
          min_seeds: int = MIN_SEEDS) -> Comparison:
    """Welch's unequal-variance t-test of the means of `a` and `b`, two-sided (uncorrected)."""
    a, b = _clean(a), _clean(b)
    if min(len(a), len(b)) < min_seeds:
        return Comparison(None, None, f"fewer than {min_seeds} seeds")
    if np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]:
        # every seed of both methods scored the same: t is 0/0; no difference was observed
        return Comparison(1.0, False, "every seed of both scored the same")
    with warnings.catch_warnings():
        # both constant but different: scipy returns t = inf, p = 0 (the limit of vanishing spread),
        # warning about the precision of the zero variances
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Comparison(p, bool(p < alpha))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): the i-th smallest of m p-values is multiplied
    by m - i (i from 0), made non-decreasing in that order, capped at 1. Rejecting where the adjusted
    p < alpha controls the family-wise error at alpha. (scipy 1.17 has no Holm adjustment.)"""
    p = np.asarray(p_values, float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


@dataclass(frozen=True)
class Verdict:
    verdict: str               # best, tied, worse or "no test"
    p_value: float | None      # Welch's p against the top row, unadjusted
    p_holm: float | None       # Holm-adjusted over the group's comparisons
    reason: str = ""           # why "no test"


def verdicts(scores: Sequence[Sequence[float]], higher_is_better: bool, alpha: float = ALPHA,
             min_seeds: int = MIN_SEEDS) -> list[Verdict]:
    """Verdicts of the rows of one group (see the module docstring), from each row's seeds' scores."""
    clean = [_clean(s) for s in scores]
    testable = [i for i, s in enumerate(clean) if len(s) >= min_seeds]
    out: dict[int, Verdict] = {}
    for i, s in enumerate(clean):
        if i in testable:
            continue
        out[i] = Verdict("no test", None, None, "no finished seed" if len(s) == 0 else f"fewer than {min_seeds} seeds")
    if len(clean) == 1:
        return [Verdict("no test", None, None, "no other method on this task, horizon and model")]
    if len(testable) < 2:
        for i in testable:
            out[i] = Verdict("no test", None, None, f"no other row with {min_seeds} or more seeds to compare with")
        return [out[i] for i in range(len(clean))]
    sign = 1.0 if higher_is_better else -1.0
    top = max(testable, key=lambda i: (sign * clean[i].mean(), -i))
    others = [i for i in testable if i != top]
    tests = [welch(clean[i], clean[top], alpha, min_seeds) for i in others]
    adjusted = holm([t.p_value for t in tests])
    for i, t, p in zip(others, tests, adjusted):
        out[i] = Verdict("worse" if p < alpha else "tied", t.p_value, float(p), t.reason)
    if len(others) == len(clean) - 1 and all(out[i].verdict == "worse" for i in others):
        out[top] = Verdict("best", None, None)
    elif any(out[i].verdict == "tied" for i in others):
        out[top] = Verdict("tied", None, None)
    else:   # better than every row it could be compared with, but some rows could not be tested
        out[top] = Verdict("no test", None, None, f"rows with fewer than {min_seeds} seeds in its group")
    return [out[i] for i in range(len(clean))]


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


def median_range(values) -> tuple[float, float, float]:
    """(median, min, max) of the finite values; nan when there are none."""
    a = _clean(values)
    if not len(a):
        return np.nan, np.nan, np.nan
    return float(np.median(a)), float(a.min()), float(a.max())

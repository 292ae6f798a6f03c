"""Confidence intervals, Welch's test and the solved criteria, against scipy and hand-computed numbers."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from harness import stats
from harness.registry import TASKS


def test_interval_known_numbers():
    mean, low, high = stats.mean_ci([1, 2, 3, 4, 5])
    # mean 3, sample std sqrt(2.5), t(0.975, 4) = 2.776445
    half = 2.776445105 * math.sqrt(2.5) / math.sqrt(5)
    assert mean == 3 and low == pytest.approx(3 - half, abs=1e-8) and high == pytest.approx(3 + half, abs=1e-8)
    ref = sps.t.interval(0.95, 4, loc=3, scale=sps.sem([1, 2, 3, 4, 5]))
    assert (low, high) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("values", [[0.7], [0.2, 0.9], []])
def test_fewer_than_three_seeds_give_no_interval(values):
    mean, low, high = stats.mean_ci(values, bounds=(0, 1))
    assert math.isnan(low) and math.isnan(high)
    assert (math.isnan(mean) if not values else mean == pytest.approx(np.mean(values)))
    assert stats.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)   # no spread: zero width, not nan


def test_intervals_stay_inside_the_metric_range():
    # the cases: one seed solved, others not; errors near zero with one large
    accuracy = [1.0, 1.0, 0.2]
    mean, low, high = stats.mean_ci(accuracy, bounds=stats.metric_range("accuracy"))
    t_low, t_high = sps.t.interval(0.95, 2, loc=np.mean(accuracy), scale=sps.sem(accuracy))
    assert t_low < 0 and t_high > 1                          # the raw t interval leaves [0, 1] on both sides
    assert (low, high) == (0.0, 1.0)
    mse = [0.001, 0.002, 0.3]
    mean, low, high = stats.mean_ci(mse, bounds=stats.metric_range("mse"))
    t_low, t_high = sps.t.interval(0.95, 2, loc=np.mean(mse), scale=sps.sem(mse))
    assert t_low < 0 and low == 0.0 and high == pytest.approx(t_high, rel=1e-12)
    for metric in ("mse", "nmse", "bits"):
        assert stats.metric_range(metric) == (0.0, math.inf)
    assert stats.metric_range("something else") == (-math.inf, math.inf)
    # inside the range the interval is the t interval itself
    assert stats.mean_ci([0.4, 0.5, 0.6], bounds=(0, 1))[1:] == pytest.approx(
        sps.t.interval(0.95, 2, loc=0.5, scale=sps.sem([0.4, 0.5, 0.6])), rel=1e-12)


def test_interval_columns_ignore_missing_and_respect_bounds():
    table = np.array([[1.0, 1.0, 0.0], [2.0, np.nan, 0.9], [3.0, 5.0, 0.95], [4.0, 6.0, 1.0]])
    mean, low, high = stats.mean_ci_columns(table)
    assert mean[0] == 2.5 and mean[1] == 4
    assert (low[0], high[0]) == pytest.approx(stats.mean_ci([1, 2, 3, 4])[1:])
    assert (low[1], high[1]) == pytest.approx(stats.mean_ci([1, 5, 6])[1:])
    _, low, high = stats.mean_ci_columns(table[:, 2:], bounds=(0, 1))
    assert low[0] == 0.0 and high[0] == 1.0
    _, low, _ = stats.mean_ci_columns(table[:2])               # two seeds: no band anywhere
    assert np.isnan(low).all()


def test_geometric_interval_is_positive_and_ignores_no_seed():
    table = np.array([[1e-10, 1.0, 0.0], [1e-2, 2.0, 1.0], [1.0, 4.0, 1.0]])
    gmean, low, high = stats.geometric_ci_columns(table)
    assert gmean[0] == pytest.approx(1e-4) and gmean[1] == pytest.approx(2.0)   # one seed at 1e-10 does not dominate
    logs = np.log(table[:, 0])
    expected = np.exp(sps.t.interval(0.95, 2, loc=logs.mean(), scale=sps.sem(logs)))
    assert (low[0], high[0]) == pytest.approx(tuple(expected))
    assert low[0] > 0
    assert np.isnan(gmean[2])                                  # a zero in one seed: no geometric mean


@pytest.mark.parametrize("k,n", [(0, 3), (1, 3), (2, 3), (3, 3), (7, 10), (0, 1)])
def test_clopper_pearson_against_scipy_and_the_beta_quantiles(k, n):
    low, high = stats.clopper_pearson(k, n)
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert (low, high) == (ci.low, ci.high)
    # the definition: Beta quantiles (Clopper and Pearson 1934)
    assert low == pytest.approx(0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1), abs=1e-9)
    assert high == pytest.approx(1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k), abs=1e-9)
    assert 0 <= low <= k / n <= high <= 1
    assert all(math.isnan(v) for v in stats.clopper_pearson(0, 0))


def test_holm_step_down():
    # Holm 1979: sorted p (0.01, 0.02, 0.04) x (3, 2, 1) = (0.03, 0.04, 0.04), monotone
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])     # capped at 1 (0.5 x 2 = 1.0, 0.6 -> max(1.0, 0.6))
    assert stats.holm([0.03]) == pytest.approx([0.03])             # one comparison: unchanged
    assert len(stats.holm([])) == 0
    # never smaller than the raw p, never larger than Bonferroni
    p = np.array([0.001, 0.2, 0.03, 0.04, 0.5])
    adjusted = stats.holm(p)
    assert (adjusted >= p).all() and (adjusted <= np.minimum(1, len(p) * p)).all()


def verdict_names(*args, **kw):
    return [v.verdict for v in stats.verdicts(*args, **kw)]


def test_methods_all_at_one_are_tied_none_best():
    assert verdict_names([[1.0, 1.0, 1.0]] * 3, higher_is_better=True) == ["tied", "tied", "tied"]
    found = stats.verdicts([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], True)
    assert found[1].p_value == 1.0 and found[1].p_holm == 1.0


def test_a_clearly_better_method_is_best_and_the_others_worse():
    scores = [[0.50, 0.52, 0.49], [0.98, 0.99, 1.0], [0.20, 0.25, 0.22]]
    found = stats.verdicts(scores, higher_is_better=True)
    assert [v.verdict for v in found] == ["worse", "best", "worse"]
    raw = [sps.ttest_ind(scores[i], scores[1], equal_var=False).pvalue for i in (0, 2)]
    assert [found[0].p_value, found[2].p_value] == pytest.approx(raw, rel=1e-12)
    assert [found[0].p_holm, found[2].p_holm] == pytest.approx(list(stats.holm(raw)), rel=1e-12)
    # lower is better (MSE): the smallest errors win
    assert verdict_names([[0.1, 0.12, 0.11], [0.001, 0.002, 0.0015]], higher_is_better=False) == ["worse", "best"]


def test_best_needs_every_other_row_worse_after_holm():
    # b and c are both clearly below a, d is close to a: a is only tied with d, b and c are worse
    a, b, c, d = [0.90, 0.92, 0.91], [0.1, 0.12, 0.11], [0.3, 0.31, 0.29], [0.85, 0.95, 0.90]
    assert verdict_names([a, b, c, d], True) == ["tied", "worse", "worse", "tied"]
    # a difference at p = 0.042 is significant alone, not when two such comparisons share the group
    top, below = [0.9, 1.0, 0.95], [0.7, 0.85, 0.8]
    p = sps.ttest_ind(below, top, equal_var=False).pvalue
    assert 0.025 < p < 0.05
    assert verdict_names([top, below], True) == ["best", "worse"]
    found = stats.verdicts([top, below, below], True)
    assert [v.verdict for v in found] == ["tied", "tied", "tied"]
    assert found[1].p_value == pytest.approx(p) and found[1].p_holm == pytest.approx(2 * p)


def test_rows_with_too_few_seeds_are_not_tested():
    found = stats.verdicts([[0.9, 0.95], [0.1, 0.12, 0.11], [0.5, 0.52, 0.51]], True)
    assert found[0].verdict == "no test" and "fewer than 3 seeds" in found[0].reason
    # the top among testable rows beat the other, but an untested row may be better: no "best"
    assert [v.verdict for v in found[1:]] == ["worse", "no test"]
    assert verdict_names([[0.9]], True) == ["no test"]
    assert verdict_names([[0.9, 0.8, 0.7], [0.5]], True) == ["no test", "no test"]


def test_welch_agrees_with_formula_and_scipy():
    a, b = [1, 2, 3, 4, 5], [2, 4, 6, 8, 10]
    # t = (3 - 6) / sqrt(2.5/5 + 10/5); Welch-Satterthwaite df = 2.5^2 / (0.5^2/4 + 2^2/4)
    t = -3 / math.sqrt(2.5)
    df = 2.5 ** 2 / (0.5 ** 2 / 4 + 2 ** 2 / 4)
    p = 2 * sps.t.sf(abs(t), df)
    result = stats.welch(a, b)
    assert result.p_value == pytest.approx(p, rel=1e-10)
    assert result.p_value == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    assert p > stats.ALPHA and result.significant is False   # p = 0.108
    assert stats.welch([1, 1.1, 0.9], [5, 5.1, 4.9]).significant is True


def test_welch_needs_three_seeds_per_side():
    result = stats.welch([1, 2], [3, 4, 5])
    assert result.p_value is None and result.significant is None and "fewer than 3" in result.reason
    # every seed the same on both sides: no difference observed (scipy's t is 0/0)
    assert stats.welch([1, 1, 1], [1, 1, 1]).p_value == 1.0
    # constant but different: the limit of vanishing spread, as scipy computes it
    assert stats.welch([1, 1, 1], [0.5, 0.5, 0.5]).p_value == 0.0


def test_solved_direction_and_sequences():
    curve = [{"sequences": 0, "score": 0.2}, {"sequences": 64, "score": 0.995}, {"sequences": 128, "score": 1.0}]
    assert stats.sequences_to_solve(curve, 0.99, True) == 64
    assert stats.sequences_to_solve(curve, 0.999, True) == 128
    assert stats.sequences_to_solve(curve, 1.5, True) is None
    mse = [{"sequences": 0, "score": 0.17}, {"sequences": 32, "score": 0.005}]
    assert stats.sequences_to_solve(mse, 0.01, False) == 32
    assert not stats.reached(0.02, 0.01, False) and stats.reached(0.01, 0.01, False)
    assert not stats.reached(1.0, None, True)


@pytest.mark.parametrize("name,threshold", [("copy", 0.99), ("adding", 0.01)])
def test_task_thresholds_beat_chance(name, threshold):
    task = TASKS.get(name)(5)
    assert task.solved_threshold == threshold
    assert stats.reached(threshold, threshold, task.higher_is_better)
    assert not stats.reached(task.chance, threshold, task.higher_is_better)

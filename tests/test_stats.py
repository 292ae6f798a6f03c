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


def test_one_seed_gives_no_interval():
    mean, low, high = stats.mean_ci([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in stats.mean_ci([]))
    assert stats.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)   # no spread: zero width, not nan


def test_interval_columns_ignore_missing():
    table = np.array([[1.0, 1.0], [2.0, np.nan], [3.0, 5.0]])
    mean, low, high = stats.mean_ci_columns(table)
    assert mean[0] == 2 and mean[1] == 3
    assert (low[0], high[0]) == pytest.approx(stats.mean_ci([1, 2, 3])[1:])
    assert (low[1], high[1]) == pytest.approx(stats.mean_ci([1, 5])[1:])


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
    assert stats.welch([1, 1, 1], [1, 1, 1]).p_value is None


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

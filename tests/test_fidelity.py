"""Fidelity figures of deterministic estimates, and the checkpoint schedule."""
import math

import pytest
import torch

from harness.fidelity import compare
from harness.runner import checkpoints


def test_compare_all_recurrent_and_per_parameter():
    ref = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    est = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, -1.0])]   # readout exact, recurrent reversed
    figs = compare(est, ref, ["cell.weight_hh", "readout.weight"], ["cell.weight_hh"])
    assert figs["cosine"] == pytest.approx(0.0)
    assert figs["cosine_recurrent"] == pytest.approx(1.0)
    assert figs["rel_error"] == pytest.approx(2 / math.sqrt(2))
    assert figs["groups"]["readout.weight"]["cosine"] == pytest.approx(-1.0)


def test_zero_reference_gives_no_cosine():
    figs = compare([torch.zeros(3)], [torch.zeros(3)], ["a"], ["a"])
    assert figs["cosine"] is None and figs["rel_error"] is None


@pytest.mark.parametrize("steps,n,expected", [(100, 3, [0, 50, 100]), (10, 1, [0, 10]), (7, 4, [0, 2, 5, 7])])
def test_checkpoints_include_start_and_end(steps, n, expected):
    assert checkpoints(steps, n) == expected

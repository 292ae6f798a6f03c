"""`python -m pytest tests --method-file FILE` runs the conformance suite on an out-of-tree method only."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BUGGY_SNAP1 = '''
"""SnAp-1 with D_t missing from its immediate term, out of tree (issue 18's example)."""
import torch

from harness.jacobians import UnitJacobians
from methods.snap1 import SnAp1


class MySnap(SnAp1):
    name = "my_snap"
    description = "SnAp-1 with a planted bug"
    paper = "none"

    def unit_terms(self, cell, x, prev, new):
        units = super().unit_terms(cell, x, prev, new)
        ones = [torch.ones_like(c) for c in units.Ci]
        return UnitJacobians(ones, ones, units.Ds)
'''


def test_method_file_runs_the_conformance_suite_on_that_method_only(tmp_path):
    path = tmp_path / "my_snap.py"
    path.write_text(textwrap.dedent(BUGGY_SNAP1))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", "--method-file",
                           str(path), "-k", "declares_itself or (exact_in_declared_regimes and rnn)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert failed and all("test_conformance.py::test_exact_in_declared_regimes[my_snap-" in f for f in failed), out
    assert any("one-step sequence-rnn" in f for f in failed) and any("diagonal W_hh" in f for f in failed)
    assert "2 passed" in out and "deselected" in out   # test_declares_itself[my_snap...] x 2; other files deselected

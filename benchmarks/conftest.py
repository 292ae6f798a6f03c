"""pytest-benchmark suite of every method's cost (README, "Benchmark suite").

    python -m pytest benchmarks --benchmark-only --benchmark-autosave     # all; a few minutes alone
    python -m pytest benchmarks -k "methods and lstm"                      # a subset
    python benchmarks/ratios.py                                            # ratio tables of the newest save

CI does not run it (pytest.ini: testpaths = tests, --benchmark-disable); here the benchmarks are
the point, so they are enabled again.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pytest.ini's addopts disables benchmarks for the test suite; --benchmark-enable overrides it
    if hasattr(config.option, "benchmark_enable"):
        config.option.benchmark_enable = True

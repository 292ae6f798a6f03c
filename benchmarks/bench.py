"""What the pytest-benchmark suite (benchmarks/test_*.py) shares: building one method's training step
on a configuration, measuring its memory in a warm-up step, and recording what the ratio tables
(benchmarks/ratios.py) need in each benchmark's `extra_info`.

A training step is what the runner times: one batch of whole sequences with every parameter update
the method makes on it (harness/runner.py), here on a fresh batch of the task's training stream each
round. Memory is measured as the runner measures it, on the first (warm-up) step, which is not timed.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness.config import ConfigError  # noqa: E402
from harness.meters import SavedBytesMeter  # noqa: E402
from harness.method import RunSpec, Updater  # noqa: E402
from harness.models import CELLS as CELL_TYPES  # noqa: E402
from harness.registry import METHODS, TASKS  # noqa: E402
from harness.task import stream_seed  # noqa: E402

try:   # the public base of forward-mode methods (harness/online.py; methods/_online.py before it moved)
    from harness.online import OnlineMethod  # noqa: E402
except ImportError:  # pragma: no cover - depends on the checkout
    from methods._online import OnlineMethod  # noqa: E402

THREADS = 1
CELLS = tuple(CELL_TYPES)   # every cell the harness has


def forward_mode(name: str) -> bool:
    """Forward-mode methods (RTRL and its approximations) cost O(H^4) (rtrl) or more memory per lane:
    they are benchmarked on the small configuration."""
    return issubclass(METHODS.get(name), OnlineMethod)


def registered() -> list[str]:
    return METHODS.names()


@dataclass
class Prepared:
    """One method's training step on one configuration, warmed up and measured."""

    label: str
    step: Callable[[], float]
    info: dict = field(default_factory=dict)


def prepare(method: str, params: dict, task: str, seq_len: int, cell: str, hidden: int, batch: int,
            task_params: dict | None = None) -> Prepared:
    """Build the method's network (seeded like the runner), an Adam optimizer with clipping 1.0 (the
    runner's defaults), and one warm-up step measured for saved and state bytes. Raises ConfigError
    when the method refuses the configuration (its `check`)."""
    torch.set_num_threads(THREADS)
    t = TASKS.get(task)(seq_len, **(task_params or {}))
    m = METHODS.get(method)(**params)
    spec = RunSpec(cell, t.input_size, hidden, t.output_size, t.num_steps, batch)
    m.check(spec)
    torch.manual_seed(stream_seed(0, "init"))
    net = m.build_network(spec)
    updater = Updater(net, torch.optim.Adam(net.parameters(), lr=1e-3), clip=1.0)
    rng = torch.Generator().manual_seed(stream_seed(0, "method"))
    stream = t.stream(0, "train", batch)
    first = next(stream)
    meter = SavedBytesMeter(list(net.parameters()) + first.tensors())
    t0 = time.perf_counter()
    with meter.measure():
        m.train_step(net, first, updater, rng)
    warmup_s = time.perf_counter() - t0
    info = {"method": method, "label": m.label, "params": params, "task": task, "T": seq_len,
            "L": t.num_steps, "cell": cell, "hidden": hidden, "batch": batch, "threads": THREADS,
            "saved_bytes": meter.peak, "state_bytes": m.state_bytes(),
            "n_params": sum(p.numel() for p in net.parameters()), "warmup_s": warmup_s,
            "updates_per_step": updater.updates, "load_average": os.getloadavg()[0]}
    return Prepared(m.label, lambda: m.train_step(net, next(stream), updater, rng), info)


def prepare_or_skip(*args, **kwargs) -> Prepared:
    import pytest
    try:
        return prepare(*args, **kwargs)
    except ConfigError as exc:
        pytest.skip(f"refused: {exc}")


def rounds_for(prepared: Prepared, budget_s: float, most: int = 5, least: int = 1) -> int:
    """Rounds that fit `budget_s` at the warm-up step's pace (rtrl at hidden 128 takes seconds per step)."""
    return max(least, min(most, int(budget_s / max(prepared.info["warmup_s"], 1e-9))))


def run_against(benchmark, prepared: Prepared, baseline: Prepared | None, suite: str, rounds: int, **extra) -> None:
    """`run_paired` against `baseline`, or `run` when there is none (the baseline itself)."""
    if baseline is None:
        run(benchmark, prepared, suite, rounds, **extra)
    else:
        run_paired(benchmark, prepared, baseline, suite, rounds, **extra)


def run(benchmark, prepared: Prepared, suite: str, rounds: int, **extra) -> None:
    """Time `rounds` training steps with pytest-benchmark and record the configuration and memory."""
    benchmark.extra_info.update(prepared.info, suite=suite, **extra)
    benchmark.pedantic(prepared.step, rounds=rounds, iterations=1, warmup_rounds=0)


def run_paired(benchmark, prepared: Prepared, baseline: Prepared, suite: str, rounds: int, **extra) -> None:
    """Time `prepared`'s steps with pytest-benchmark, each round preceded by one step of `baseline`
    (untimed by pytest-benchmark, timed here), so both see the same load on a shared machine; records
    the median over rounds of the ratio within a round."""
    base_times, own_times = [], []

    def setup():
        t0 = time.perf_counter()
        baseline.step()
        base_times.append(time.perf_counter() - t0)

    def target():
        t0 = time.perf_counter()
        prepared.step()
        own_times.append(time.perf_counter() - t0)

    benchmark.extra_info.update(prepared.info, suite=suite, **extra)
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        baseline=baseline.label, baseline_info=baseline.info,
        paired_ratio=statistics.median(o / b for o, b in zip(own_times, base_times)),
        paired_ms=1e3 * statistics.median(own_times), baseline_paired_ms=1e3 * statistics.median(base_times))

"""Every registered method (default hyperparameters) on every cell it accepts, one benchmark each.

Standard configuration: copy task T = 80 (L = 100 steps), hidden 128, batch 32, one thread, Adam
with clipping. Forward-mode methods (subclasses of the online base) run on the small configuration
instead, hidden 32 and batch 8: rtrl's influence matrix at hidden 128 would need 4.7 GiB (LSTM) and
its O(H^4) step some 100 s of a training step (tanh RNN); bptt and tbptt also run there, as the
baselines of their ratios. A method that refuses a cell (kf_rtrl: tanh RNN only) is skipped with its
reason. New methods join by being registered. Each round of a method other than bptt is preceded by
one (untimed) bptt step on the same configuration and cell, timed aside: the ratio to bptt is taken
within rounds, so a shared machine's changing load falls on both alike.
"""
import pytest

from bench import CELLS, forward_mode, prepare, prepare_or_skip, registered, run_against

CONFIGS = {"standard": {"hidden": 128, "batch": 32}, "small": {"hidden": 32, "batch": 8}}
BASELINES = ("bptt", "tbptt")
CASES = [(config, cell, name) for name in registered() for config in CONFIGS for cell in CELLS
         if (config == "small") == forward_mode(name) or (config == "small" and name in BASELINES)]


@pytest.mark.parametrize("config,cell,name", CASES, ids=[f"{c}-{cell}-{n}" for c, cell, n in CASES])
def test_method(benchmark, config, cell, name):
    benchmark.group = f"methods {config} {cell}"
    prepared = prepare_or_skip(name, {}, "copy", 80, cell, **CONFIGS[config])
    baseline = None if name == "bptt" else prepare("bptt", {}, "copy", 80, cell, **CONFIGS[config])
    run_against(benchmark, prepared, baseline, "methods", rounds=5 if config == "standard" else 3, config=config)

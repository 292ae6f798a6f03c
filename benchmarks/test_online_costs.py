"""benchmarks/online_costs.py's cost comparison as parametrised benchmarks: every registered
forward-mode method and bptt on the tanh RNN (and on the leaky RNN where the harness has it, the model
of RFLO and e-prop), adding task T = 20, hidden 32/64/128 x batch 1/32, one thread; a method that
refuses a cell is skipped with its reason. Rounds are paired with a bptt step, as in test_methods.py. Rounds fit a 10-second budget per benchmark at the warm-up step's pace (rtrl at hidden 128,
batch 32 takes seconds a step: one round). The bias and variance half of that script is not a
timing and stays there.
"""
import pytest

from bench import CELLS, forward_mode, prepare, prepare_or_skip, registered, rounds_for, run_against

NAMES = ["bptt"] + [n for n in registered() if forward_mode(n)]
ONLINE_CELLS = [c for c in ("rnn", "leaky") if c in CELLS]
CASES = [(c, h, b, n) for c in ONLINE_CELLS for h in (32, 64, 128) for b in (1, 32) for n in NAMES]


@pytest.mark.parametrize("cell,hidden,batch,name", CASES, ids=[f"{c}-H{h}-B{b}-{n}" for c, h, b, n in CASES])
def test_online_cost(benchmark, cell, hidden, batch, name):
    benchmark.group = f"online_costs {cell} H{hidden} B{batch}"
    prepared = prepare_or_skip(name, {}, "adding", 20, cell, hidden, batch)
    baseline = None if name == "bptt" else prepare("bptt", {}, "adding", 20, cell, hidden, batch)
    run_against(benchmark, prepared, baseline, "online_costs", rounds=rounds_for(prepared, 10.0))

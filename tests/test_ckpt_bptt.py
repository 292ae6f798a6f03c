"""ckpt_bptt: the exact gradient in float64 whatever the schedule (segments of k steps, or Gruslys et
al.'s memory budget), bitwise bptt's gradient and training trajectory on CPU (same kernels, same order
of accumulation); the memory schedule runs the planned number of steps within its budget."""
import functools

import pytest
import torch

from harness.config import ConfigError
from harness.fidelity import flat, reference_gradient
from harness.method import RunSpec, Updater
from harness.models import build_network
from harness.registry import METHODS
from methods.ckpt_bptt import hsm_plan
from conftest import tiny_batch

CKPT = METHODS.get("ckpt_bptt")
SCHEDULES = [{}, {"segment": 1}, {"segment": 3}, {"segment": 7}, {"segment": 24}, {"segment": 100},
             {"memory": 1}, {"memory": 2}, {"memory": 3}, {"memory": 7}, {"memory": 24}, {"memory": 50}]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "leaky"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=[str(s) for s in SCHEDULES])
def test_gradient_is_exact(cell, schedule):
    task, batch = tiny_batch("copy", seq_len=4, batch=3)   # L = 24
    torch.manual_seed(0)
    net = build_network(cell, task.input_size, 5, task.output_size).double()
    loss, g = CKPT(**schedule).gradient(net, batch, None)
    ref = flat(reference_gradient(net, batch))
    assert ((flat(g) - ref).norm() / ref.norm()).item() < 1e-10
    _, g_bptt = METHODS.get("bptt")().gradient(net, batch, None)
    assert all(torch.equal(a, b) for a, b in zip(g, g_bptt))


def test_segments_cover_the_sequence():
    assert CKPT().segments(100) == [(s, s + 10) for s in range(0, 100, 10)]
    assert CKPT().segments(23)[-1] == (20, 23)          # round(sqrt(23)) = 5, final partial segment kept
    assert CKPT(segment=30).segments(23) == [(0, 23)]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "leaky"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("schedule", [{}, {"segment": 3}, {"memory": 4}], ids=["default", "segment3", "memory4"])
def test_training_trajectory_is_bitwise_bptts(cell, dtype, schedule):
    task, _ = tiny_batch("copy", seq_len=6)
    trained = []
    for method in (METHODS.get("bptt")(), CKPT(**schedule)):
        torch.manual_seed(1)
        net = build_network(cell, task.input_size, 8, task.output_size).to(dtype)
        updater = Updater(net, torch.optim.Adam(net.parameters(), lr=1e-2), clip=0.5)
        stream = task.stream(0, "train", 4)
        losses = [method.train_step(net, next(stream).to(dtype=dtype), updater, None) for _ in range(4)]
        trained.append((losses, [p.detach().clone() for p in net.parameters()]))
    (l_bptt, p_bptt), (l_ckpt, p_ckpt) = trained
    assert l_bptt == l_ckpt
    assert all(torch.equal(a, b) for a, b in zip(p_bptt, p_ckpt))


def test_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="segment=0"):
        CKPT(segment=0)
    with pytest.raises(ConfigError, match="memory=0"):
        CKPT(memory=0)
    with pytest.raises(ConfigError, match="two schedules"):
        CKPT(segment=4, memory=4)


def test_plan_recurrence():
    """Gruslys et al.'s table: with one slot every step reruns from the start, t (t + 1) / 2; with a slot
    per step, 2 t - 1 (each step once forward, once rerun); more slots never cost more; small cases by hand."""
    Q, Y = hsm_plan(40, 8)

    @functools.lru_cache(maxsize=None)
    def q(t, k):       # the paper's recursion from its own base cases only (the table shortcuts t <= k)
        if t <= 1 or k == 1:
            return t * (t + 1) // 2
        return min(y + q(t - y, k - 1) + q(y, k) for y in range(1, t))

    assert all(Q[n, k] == q(n, k) for n in range(41) for k in range(1, 9))
    assert all(Q[n, k] == 2 * n - 1 for k in range(1, 9) for n in range(1, k + 1))
    assert (Q[1:, 1:-1] >= Q[1:, 2:]).all()
    assert Q[3, 2] == 5 and Y[3, 2] == 1        # y=1: 1 + Q(2,1)=3 + Q(1,2)=1; y=2: 2 + 1 + Q(2,2)=3 = 6
    assert Q[4, 2] == 8                          # y=2: 2 + Q(2,1)=3 + Q(2,2)=3; y=1: 1 + 6 + 1; y=3: 3 + 1 + 5


@pytest.mark.parametrize("memory", [1, 2, 3, 5, 8, 23, 40])
def test_memory_schedule_keeps_its_budget_and_plan(memory):
    """The schedule evaluates exactly the planned Q(L, m) steps and never stores more than m carries."""
    task, batch = tiny_batch("copy", seq_len=3, batch=2)      # L = 23
    torch.manual_seed(0)
    net = build_network("lstm", task.input_size, 4, task.output_size).double()
    method = CKPT(memory=memory)
    method.gradient(net, batch, None)
    Q, _ = hsm_plan(23, memory)
    assert method.steps == Q[23, memory]
    assert method.held == min(memory, 23)


@pytest.mark.parametrize("segment", [None, 4])
def test_credit_by_lag_is_bptts(segment):
    """The credit hooks see the rerun segments' hidden states receive bptt's gradients (the no-graph
    forward pass registers none)."""
    from harness import credit
    task, batch = tiny_batch("copy", seq_len=4, batch=2)
    torch.manual_seed(0)
    net = build_network("lstm", task.input_size, 5, task.output_size).double()
    ours = credit.measure(CKPT(segment=segment), net, batch, torch.Generator().manual_seed(0))
    ref = credit.measure(METHODS.get("bptt")(), net, batch, torch.Generator().manual_seed(0))
    assert ours["terms"] == ref["terms"]
    assert ours["norm"] == pytest.approx(ref["norm"], rel=1e-12, abs=1e-300)


def test_memory_beyond_the_sequence_stores_every_carry():
    """More slots than steps cannot help (Q(t, k) = Q(t, t) for k >= t): a budget of L or more stores
    every carry, 2 L - 1 step evaluations (each step once forward, once rerun), with no table (one
    with a column per slot at memory=10**12 would take 182 TiB; even min(m, L) columns is O(L^3))."""
    task, batch = tiny_batch("copy", seq_len=4, batch=2)    # L = 24
    torch.manual_seed(0)
    net = build_network("gru", task.input_size, 3, task.output_size).double()
    method, planned = CKPT(memory=10**12), hsm_plan.cache_info()
    method.check(RunSpec("gru", task.input_size, 3, task.output_size, 24, 2, torch.float64))
    _, g = method.gradient(net, batch, None)
    assert hsm_plan.cache_info() == planned                   # no table was made
    _, g_bptt = METHODS.get("bptt")().gradient(net, batch, None)
    assert all(torch.equal(a, b) for a, b in zip(g, g_bptt))
    assert method.steps == 2 * 24 - 1 and method.held == 24

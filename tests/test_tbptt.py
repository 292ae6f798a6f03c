"""Truncated BPTT against full BPTT, a hand-computed scalar example, and a per-loss-term reference."""
import pytest
import torch

from harness.config import ConfigError
from harness.fidelity import reference_gradient
from harness.models import build_network, detach
from harness.registry import METHODS
from harness.task import Batch
from conftest import tiny_batch

TBPTT = METHODS.get("tbptt")


def rel(a, b):
    fa, fb = torch.cat([x.flatten() for x in a]), torch.cat([x.flatten() for x in b])
    return ((fa - fb).norm() / fb.norm()).item()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("params", [{"k": 24}, {"k": 100}, {"k1": 24, "k2": 30}, {"k": 24, "update": "sequence"}])
def test_window_covering_the_sequence_is_bptt(cell, params):
    task, batch = tiny_batch("copy", seq_len=4, batch=3)   # L = 24
    torch.manual_seed(0)
    net = build_network(cell, task.input_size, 4, task.output_size).double()
    _, g = TBPTT(**params).gradient(net, batch, None)
    assert rel(g, reference_gradient(net, batch)) < 1e-12


def per_term_reference(net, batch, k1, k2):
    """Independent truncated gradient: the loss at step t of window [b, e) backpropagates to
    step s = b - (k2 - k1), from a state computed without gradient."""
    L = batch.num_steps
    ends = list(range(k1, L, k1)) + [L]
    with torch.no_grad():
        carries = [net.init_carry(batch.batch_size)]
        for t in range(L):
            carries.append(net.step(batch.x[t], carries[-1])[1])
    total = [torch.zeros_like(p) for p in net.parameters()]
    for b, e in zip([0] + ends, ends):
        s = max(0, b - (k2 - k1))
        for t in range(b, e):
            carry = detach(carries[s])
            for tau in range(s, t + 1):
                out, carry = net.step(batch.x[tau], carry)
            g = torch.autograd.grad(batch.loss(out[None], t, t + 1), list(net.parameters()), allow_unused=True)
            total = [a + (0 if x is None else x) for a, x in zip(total, g)]
    return total


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("k1,k2", [(1, 1), (2, 2), (3, 3), (2, 3), (2, 5), (3, 7), (5, 5)])
def test_windows_equal_per_term_reference(cell, k1, k2):
    task, batch = tiny_batch("copy", seq_len=3, batch=2)   # L = 23: final partial windows for most k1
    torch.manual_seed(1)
    net = build_network(cell, task.input_size, 3, task.output_size).double()
    _, g = TBPTT(k1=k1, k2=k2).gradient(net, batch, None)
    assert rel(g, per_term_reference(net, batch, k1, k2)) < 1e-12


def scalar_example():
    """H=1 tanh RNN, 3 steps, one lane, a squared-error loss at every step."""
    torch.manual_seed(3)
    net = build_network("rnn", 1, 1, 1).double()
    x = torch.tensor([[[0.5]], [[-1.0]], [[2.0]]], dtype=torch.float64)
    y = torch.tensor([[[0.3]], [[-0.2]], [[0.7]]], dtype=torch.float64)
    return net, Batch(x, y, torch.ones(3, 1, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64), "mse")


def hand_gradient(net, batch, reach):
    """d/dw and d/du of sum_t l_t by hand, where loss t backpropagates through steps reach(t)..t."""
    w, u = net.cell.weight_ih.item(), net.cell.weight_hh.item()
    b = net.cell.bias_ih.item() + net.cell.bias_hh.item()
    v, c = net.readout.weight.item(), net.readout.bias.item()
    x, y = batch.x.flatten().tolist(), batch.y.flatten().tolist()
    h = [0.0]  # h[t+1] is the state after step t
    import math
    for t in range(3):
        h.append(math.tanh(w * x[t] + u * h[-1] + b))
    dw = du = 0.0
    for t in range(3):
        g = 2 * (v * h[t + 1] + c - y[t]) / 3 * v   # dl_t/dh_t, normaliser 3 positions
        for tau in range(t, reach(t) - 1, -1):
            g *= 1 - h[tau + 1] ** 2                 # through tanh at step tau
            dw += g * x[tau]
            du += g * h[tau]
            g *= u                                   # to the previous state
    return dw, du


@pytest.mark.parametrize("k1,k2,reach", [
    (1, 1, lambda t: t),                 # each loss sees only its own step
    (1, 2, lambda t: max(0, t - 1)),     # each loss reaches one step back
    (2, 2, lambda t: 0 if t < 2 else 2),  # windows [0,2) and the final partial [2,3)
    (2, 3, lambda t: 0 if t < 2 else 1),  # the final window [2,3) reruns from step 1
    (3, 3, lambda t: 0),                 # one window: full BPTT
])
def test_three_step_hand_computed(k1, k2, reach):
    net, batch = scalar_example()
    _, g = TBPTT(k1=k1, k2=k2).gradient(net, batch, None)
    grads = dict(zip([n for n, _ in net.named_parameters()], g))
    dw, du = hand_gradient(net, batch, reach)
    assert grads["cell.weight_ih"].item() == pytest.approx(dw, rel=1e-12, abs=1e-15)
    assert grads["cell.weight_hh"].item() == pytest.approx(du, rel=1e-12, abs=1e-15)


def test_final_partial_window_is_kept():
    # copy T=4: L=24 and every scored target lies in the last 10 steps; k1=7 leaves a final window of 3
    task, batch = tiny_batch("copy", seq_len=4, batch=2, loss_on="targets")
    torch.manual_seed(0)
    net = build_network("lstm", task.input_size, 4, task.output_size).double()
    method = TBPTT(k=7)
    assert method.windows(24)[-1] == (21, 21, 24)
    loss, g = method.gradient(net, batch, None)
    with torch.no_grad():
        out, _ = net(batch.x)
    assert loss == pytest.approx(batch.loss(out).item(), rel=1e-12)
    assert rel(g, per_term_reference(net, batch, 7, 7)) < 1e-12


@pytest.mark.parametrize("k", [2, 5, 7])
def test_window_and_sequence_forms_agree_at_fixed_parameters(k):
    task, batch = tiny_batch("copy", seq_len=4, batch=2)
    torch.manual_seed(0)
    net = build_network("gru", task.input_size, 4, task.output_size).double()
    _, a = TBPTT(k=k).gradient(net, batch, None)
    _, b = TBPTT(k=k, update="sequence").gradient(net, batch, None)
    assert rel(a, b) < 1e-12


def test_window_updates_happen_every_k1_steps():
    task, batch = tiny_batch("copy", seq_len=4, batch=2)
    torch.manual_seed(0)
    net = build_network("rnn", task.input_size, 4, task.output_size).double()
    from harness.method import Updater
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=0.1), clip=None)
    TBPTT(k=5).train_step(net, batch, updater, None)
    assert updater.updates == 5      # windows end at 5, 10, 15, 20, 24
    TBPTT(k=5, update="sequence").train_step(net, batch, updater, None)
    assert updater.updates == 6


@pytest.mark.parametrize("params,message", [
    ({"k": 0}, "k=0 is not a positive integer"),
    ({"k": "2.5"}, "k='2.5' is not a positive integer"),
    ({"k1": 5, "k2": 3}, "k2=3 must be >= k1=5"),
    ({"k1": 2, "k2": 4, "update": "sequence"}, "must equal k1"),
    ({"update": "windw"}, "did you mean 'window'"),
    ({"kk": 3}, "did you mean 'k'"),
])
def test_bad_hyperparameters(params, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        TBPTT(**params)

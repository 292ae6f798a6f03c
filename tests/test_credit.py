"""Credit by lag: against per-term autograd for BPTT, and exactly zero beyond TBPTT's reach."""
import numpy as np
import pytest
import torch

from harness import credit
from harness.method import grads_of
from harness.models import run
from harness.registry import METHODS
from tests.conftest import build, tiny_batch


def reference_credit(net, batch):
    """mean over loss terms t of |dL_t / dh_{t-d}|, by autograd on the whole unrolled graph."""
    carry, outs, hs = net.init_carry(batch.batch_size), [], []
    for t in range(batch.num_steps):
        out, carry = net.step(batch.x[t], carry)
        outs.append(out)
        hs.append(net.hidden(carry))
    L = batch.num_steps
    total, count = np.zeros(L), np.zeros(L)
    for t in range(L):
        loss = batch.loss(outs[t].unsqueeze(0), t, t + 1)
        grads = torch.autograd.grad(loss, hs[: t + 1], retain_graph=True)
        for s, g in enumerate(grads):
            total[t - s] += float(g.norm())
            count[t - s] += 1
    return total / count


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bptt_matches_autograd_and_reaches_every_lag(cell):
    task, batch = tiny_batch("copy", seq_len=3)
    method = METHODS.get("bptt")()
    net, _ = build(method, cell, task, hidden=5)
    before = [p.detach().clone() for p in net.parameters()]
    result = credit.measure(method, net, batch, torch.Generator().manual_seed(0), max_terms=100)
    norms = np.array(result["norm"])
    assert result["lag"] == list(range(batch.num_steps)) and len(norms) == task.num_steps == 23
    np.testing.assert_allclose(norms, reference_credit(net, batch), rtol=1e-10, atol=0)
    assert (norms > 0).all()                 # up to lag L-1: the last loss term reaches h_0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("params,reach", [({"k": 5}, 4), ({"k1": 2, "k2": 5}, 4), ({"k": 5, "update": "sequence"}, 4),
                                          ({"k": 1}, 0)])
def test_tbptt_credit_is_exactly_zero_beyond_its_window(params, reach):
    task, batch = tiny_batch("copy", seq_len=4)
    method = METHODS.get("tbptt")(**params)
    net, _ = build(method, "lstm", task, hidden=4)
    norms = np.array(credit.measure(method, net, batch, torch.Generator(), max_terms=100)["norm"])
    assert (norms[: reach + 1] > 0).all()
    assert (norms[reach + 1:] == 0).all() and len(norms[reach + 1:]) > 10


def test_few_terms_spread_over_the_sequence_and_last_kept():
    task, batch = tiny_batch("copy", seq_len=30)
    terms = credit.loss_terms(batch, max_terms=6)
    assert len(terms) == 6 and terms[0] == 0 and terms[-1] == batch.num_steps - 1
    _, adding = tiny_batch("adding", seq_len=9)
    assert credit.loss_terms(adding) == [8]       # the adding task's one loss term


def test_undefined_for_a_method_that_says_so():
    method = METHODS.get("bptt")()
    method.credit_by_lag = None
    task, batch = tiny_batch("copy", seq_len=2)
    net, _ = build(method, "rnn", task)
    assert credit.measure(method, net, batch, torch.Generator()) is None


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_credit_is_measurable_or_declared_undefined(name):
    """A method that says its gradient flows back through the hidden states gets a finite curve
    that is nonzero at lag 0 and leaves the parameters alone; the others say None."""
    method = METHODS.get(name)(**METHODS.get(name).test_params[0])
    task, batch = tiny_batch("copy", seq_len=2)
    net, _ = build(method, "gru", task)
    before = [p.detach().clone() for p in net.parameters()]
    result = credit.measure(method, net, batch, torch.Generator().manual_seed(0))
    if method.credit_by_lag is None:
        assert result is None
        return
    norms = np.array(result["norm"], float)
    assert len(norms) == batch.num_steps and np.isfinite(norms).all() and (norms >= 0).all() and norms[0] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_a_method_that_copies_its_inputs_gets_no_curve_rather_than_failing():
    class CopyingBPTT(METHODS.get("bptt")):
        def gradient(self, net, batch, rng):
            out, _ = run(net, batch.x.clone(), net.init_carry(batch.batch_size))
            loss = batch.loss(out)
            return loss.item(), grads_of(loss, net)

    task, batch = tiny_batch("copy", seq_len=3)
    method = CopyingBPTT()
    net, _ = build(method, "rnn", task, hidden=5)
    with pytest.warns(UserWarning, match="no credit-by-lag curve"):
        assert credit.measure(method, net, batch, torch.Generator().manual_seed(0)) is None

"""bptt's gradient equals autograd's through an independent stock-module network, and passes
gradcheck on a tiny model."""
import pytest
import torch

from torch.func import functional_call

from harness.models import build_network
from harness.registry import METHODS
from conftest import tiny_batch

STOCK = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bptt_equals_autograd_through_stock_module(cell):
    task, batch = tiny_batch("copy", seq_len=5, batch=3)
    torch.manual_seed(1)
    net = build_network(cell, task.input_size, 4, task.output_size).double()
    _, grads = METHODS.get("bptt")().gradient(net, batch, None)

    stock, readout = STOCK[cell](task.input_size, 4).double(), torch.nn.Linear(4, task.output_size).double()
    ours = dict(net.named_parameters())
    for name, p in stock.named_parameters():
        p.data.copy_(ours["cell." + name.removesuffix("_l0")].data)
    readout.load_state_dict(net.readout.state_dict())
    h, _ = stock(batch.x)
    loss = (torch.nn.functional.cross_entropy(readout(h).flatten(0, 1), batch.y.flatten(), reduction="none")
            .view(batch.y.shape) * batch.mask).sum() / batch.mask.sum()
    expected = torch.autograd.grad(loss, list(stock.parameters()) + list(readout.parameters()))
    got = grads
    flat_e = torch.cat([g.flatten() for g in expected])
    flat_g = torch.cat([g.flatten() for g in got])
    assert ((flat_g - flat_e).norm() / flat_e.norm()).item() < 1e-10


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bptt_loss_passes_gradcheck(cell):
    task, batch = tiny_batch("adding", seq_len=4, batch=2)
    torch.manual_seed(2)
    net = build_network(cell, task.input_size, 3, task.output_size).double()
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in net.parameters())

    def loss_of(*ps):
        out, _ = functional_call(net, dict(zip(names, ps)), (batch.x,))
        return batch.loss(out)

    assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-8)
    # and bptt's analytic gradient is the one gradcheck just validated
    _, grads = METHODS.get("bptt")().gradient(net, batch, None)
    expected = torch.autograd.grad(loss_of(*params), params)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-12, rtol=1e-10)

"""Cells match torch.nn.RNN/LSTM/GRU when their weights are copied, in both directions."""
import pytest
import torch

from harness.models import build_network, run

STOCK = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cell_equals_stock_module(cell):
    torch.manual_seed(0)
    net = build_network(cell, 3, 5, 2).double()
    stock = STOCK[cell](3, 5).double()
    # copy stock -> ours by parameter name (layer 0 of the stock module)
    ours = dict(net.cell.named_parameters())
    for name, p in stock.named_parameters():
        ours[name.removesuffix("_l0")].data.copy_(p.data)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    expected, _ = stock(x)
    carry = net.init_carry(4)
    hs = []
    for t in range(6):
        carry = net.cell(x[t], carry)
        hs.append(net.cell.hidden(carry))
    assert torch.allclose(torch.stack(hs), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_parameter_names_and_shapes_follow_torch(cell):
    net = build_network(cell, 3, 5, 2)
    stock = STOCK[cell](3, 5)
    ours = {n: p.shape for n, p in net.cell.named_parameters()}
    theirs = {n.removesuffix("_l0"): p.shape for n, p in stock.named_parameters()}
    assert ours == theirs


def test_run_truncate_every_cuts_the_backward_path():
    torch.manual_seed(0)
    net = build_network("rnn", 2, 3, 1).double()
    x = torch.randn(6, 1, 2, dtype=torch.float64, requires_grad=True)
    out, _ = run(net, x, net.init_carry(1), truncate_every=3)
    (gx,) = torch.autograd.grad(out[5].sum(), x)
    assert gx[:3].abs().sum() == 0 and gx[3:].abs().sum() > 0

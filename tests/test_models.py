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


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_leaky_cell_is_the_stock_tanh_rnn_with_a_leak(tau):
    torch.manual_seed(0)
    net = build_network("leaky", 3, 5, 2, tau=tau).double()
    stock = torch.nn.RNNCell(3, 5).double()
    for name, p in stock.named_parameters():   # stock layout: the same names, copied across
        getattr(net.cell, name).data.copy_(p.data)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    h = ours = torch.zeros(4, 5, dtype=torch.float64)
    for t in range(6):
        h = (1 - 1 / tau) * h + (1 / tau) * stock(x[t], h)
        (ours,) = net.cell(x[t], (ours,))
        assert torch.allclose(ours, h, atol=1e-12, rtol=0)
    assert {n: p.shape for n, p in net.cell.named_parameters()} == \
        {n.removesuffix("_l0"): p.shape for n, p in torch.nn.RNN(3, 5).named_parameters()}


def test_time_constant_is_part_of_the_run_configuration():
    from harness.config import ConfigError
    from harness.runner import RunConfig
    base = dict(method="bptt", task="adding", seq_len=4, hidden=3, batch=2, steps=1)
    default = RunConfig(cell="leaky", **base)
    assert default.tau == 10.0 and default.as_dict()["tau"] == 10.0
    assert default.key() == RunConfig(cell="leaky", tau=10.0, **base).key()
    assert default.key() != RunConfig(cell="leaky", tau=5.0, **base).key()
    assert RunConfig(cell="rnn", **base).tau is None
    RunConfig(cell="leaky", tau=5.0, **base).validate()
    with pytest.raises(ConfigError, match=r"--tau .*not to --cell rnn"):
        RunConfig(cell="rnn", tau=5.0, **base).validate()
    with pytest.raises(ConfigError, match=r"--tau 0.5 must be a number >= 1"):
        RunConfig(cell="leaky", tau=0.5, **base).validate()


def test_time_constant_reaches_every_method_network():
    from harness.registry import METHODS
    from harness.method import RunSpec
    spec = RunSpec("leaky", 3, 4, 2, 5, 2, torch.float64, tau=3.0)
    for name in METHODS.names():
        if not METHODS.get(name).__module__.startswith("methods."):   # files other tests loaded
            continue
        method = METHODS.get(name)()
        try:
            method.check(spec)
        except Exception:   # noqa: BLE001 - a method that refuses the leaky cell
            continue
        cells = [m for m in method.build_network(spec).modules() if hasattr(m, "tau")]
        assert cells and all(c.tau == 3.0 for c in cells), name


def test_command_line_tau(tmp_path, capsys):
    from harness.cli import main
    tiny = ["--methods", "bptt", "--tasks", "adding", "--seq-len", "3", "--steps", "1", "--seeds", "1", "--hidden",
            "3", "--batch", "2", "--eval-batches", "1", "--quiet", "--out", str(tmp_path), "--dry-run"]
    assert main([*tiny, "--cell", "rnn", "--tau", "5"]) == 2
    assert "--tau" in capsys.readouterr().err
    assert main([*tiny, "--cell", "leaky", "--tau", "0"]) == 2
    assert main([*tiny, "--cell", "leaky", "--tau", "5"]) == 0

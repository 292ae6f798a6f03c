"""ckpt_bptt: the exact gradient in float64 whatever the segment length, and bitwise bptt's training
trajectory on CPU (same graph, same order of accumulation)."""
import pytest
import torch

from harness.config import ConfigError
from harness.fidelity import flat, reference_gradient
from harness.method import Updater
from harness.models import build_network
from harness.registry import METHODS
from conftest import tiny_batch

CKPT = METHODS.get("ckpt_bptt")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("segment", [None, 1, 3, 7, 24, 100])
def test_gradient_is_exact(cell, segment):
    task, batch = tiny_batch("copy", seq_len=4, batch=3)   # L = 24
    torch.manual_seed(0)
    net = build_network(cell, task.input_size, 5, task.output_size).double()
    loss, g = CKPT(segment=segment).gradient(net, batch, None)
    ref = flat(reference_gradient(net, batch))
    assert ((flat(g) - ref).norm() / ref.norm()).item() < 1e-10
    _, g_bptt = METHODS.get("bptt")().gradient(net, batch, None)
    assert all(torch.equal(a, b) for a, b in zip(g, g_bptt))


def test_segments_cover_the_sequence():
    assert CKPT().segments(100) == [(s, s + 10) for s in range(0, 100, 10)]
    assert CKPT().segments(23)[-1] == (20, 23)          # round(sqrt(23)) = 5, final partial segment kept
    assert CKPT(segment=30).segments(23) == [(0, 23)]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("segment", [None, 3])
def test_training_trajectory_is_bitwise_bptts(cell, dtype, segment):
    task, _ = tiny_batch("copy", seq_len=6)
    trained = []
    for method in (METHODS.get("bptt")(), CKPT(segment=segment)):
        torch.manual_seed(1)
        net = build_network(cell, task.input_size, 8, task.output_size).to(dtype)
        updater = Updater(net, torch.optim.Adam(net.parameters(), lr=1e-2), clip=0.5)
        stream = task.stream(0, "train", 4)
        losses = [method.train_step(net, next(stream).to(dtype=dtype), updater, None) for _ in range(4)]
        trained.append((losses, [p.detach().clone() for p in net.parameters()]))
    (l_bptt, p_bptt), (l_ckpt, p_ckpt) = trained
    assert l_bptt == l_ckpt
    assert all(torch.equal(a, b) for a, b in zip(p_bptt, p_ckpt))


def test_bad_segment_is_a_one_line_error():
    with pytest.raises(ConfigError, match="segment=0"):
        CKPT(segment=0)


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

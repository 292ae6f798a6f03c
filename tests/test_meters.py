"""Saved-bytes meter: counts each storage once, excludes parameters, releases with the graph,
grows with T for bptt and not for tbptt."""
import torch

from harness import meters
from harness.meters import SavedBytesMeter
from harness.method import Updater
from harness.models import build_network
from harness.registry import METHODS, TASKS


def test_counts_storage_once_and_releases_with_the_graph():
    w = torch.randn(8, 8, requires_grad=True)
    meter = SavedBytesMeter(exclude=[w])
    x = torch.randn(8, 8, requires_grad=True)
    with meter.measure():
        y = torch.tanh(x @ w)        # saves x (w excluded) and tanh's output
        z = (y * y).sum()            # saves y twice: one storage
    assert meter.current == 2 * 8 * 8 * 4
    z.backward()                     # frees the graph
    assert meter.current == 0 and meter.peak == 2 * 8 * 8 * 4


def saved_bytes(method, T, cell="lstm"):
    task = TASKS.get("copy")(T)
    torch.manual_seed(0)
    net = build_network(cell, task.input_size, 16, task.output_size)
    batch = next(task.stream(0, "train", 4))
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=0.01), clip=None)
    meter = SavedBytesMeter(list(net.parameters()) + batch.tensors())
    with meter.measure():
        method.train_step(net, batch, updater, None)
    assert meter.current == 0  # nothing left held after the step
    return meter.peak


def test_bptt_grows_with_T_tbptt_does_not():
    bptt, tbptt = METHODS.get("bptt")(), METHODS.get("tbptt")(k=5)
    b1, b2 = saved_bytes(bptt, 20), saved_bytes(bptt, 60)
    t1, t2 = saved_bytes(tbptt, 20), saved_bytes(tbptt, 60)
    assert b2 / b1 > 1.8                 # L = 40 -> 80 steps
    assert t1 == t2                      # one window's worth
    assert t2 < b2 / 5


def test_sees_tensors_kept_by_nested_hooks():
    """Only the innermost saved_tensors_hooks run: what a nested hook returns is counted, each
    storage once with the meter's own, and released when the graph lets go of it; a hook that keeps
    nothing (checkpoint's forward hook returns such a token) adds nothing."""
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(8, 8, requires_grad=True)
    meter = SavedBytesMeter(exclude=[w])
    with meter.measure():
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.detach(), lambda t: t):
            y = torch.tanh(x @ w)                     # x and tanh's output, kept by the nested hook
        z = (y * y).sum()                              # y again, by the meter's own hook: one storage
        assert meter.current == 2 * 8 * 8 * 4
        z.backward()
        assert meter.current == 0 and meter.peak == 2 * 8 * 8 * 4

        tokens = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: tokens.append(t.detach()) or len(tokens) - 1,
                                                      lambda i: tokens[i]):
            y = torch.tanh(x @ w)
        assert meter.current == 0                      # kept aside, out of sight: the stated limit
        y.sum().backward()
    assert torch.autograd.graph.saved_tensors_hooks.__enter__ is meters._enter   # unwrapped again after measuring


def _network_saved_bytes(method, T, hidden, batch_size):
    task = TASKS.get("adding")(T)
    torch.manual_seed(0)
    net = build_network("lstm", task.input_size, hidden, task.output_size)
    batch = next(task.stream(0, "train", batch_size))
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=0.01), clip=None)
    meter = SavedBytesMeter(list(net.parameters()) + batch.tensors())
    with meter.measure():
        method.train_step(net, batch, updater, None)
    assert meter.current == 0
    return meter.peak


def _loss_bytes(T, batch_size):
    task = TASKS.get("adding")(T)
    batch = next(task.stream(0, "train", batch_size))
    out = torch.randn(batch.num_steps, batch_size, task.output_size, requires_grad=True)
    meter = SavedBytesMeter([out] + batch.tensors())
    with meter.measure():
        batch.loss(out)
    return meter.peak


def test_checkpointed_bptt_counts_the_recomputed_segment():
    """ckpt_bptt at L = 1000 (segments of 32 steps): the peak holds one recomputed segment, at most two
    plus the stored boundaries and the loss's own tensors, and is far below bptt's. The per-step
    bytes come from bptt's growth with L (adding task: one loss term per sequence, so the loss's
    tensors are small beside the cell's)."""
    H, B, L = 16, 2, 1000
    bptt, ckpt = METHODS.get("bptt")(), METHODS.get("ckpt_bptt")()
    b_short, b_long = _network_saved_bytes(bptt, L - 200, H, B), _network_saved_bytes(bptt, L, H, B)
    per_step = (b_long - b_short) / 200 - (_loss_bytes(L, B) - _loss_bytes(L - 200, B)) / 200
    k = 32
    segment = k * per_step
    boundaries = (L // k + 1) * 2 * B * H * 4          # the (h, c) stored at each segment's start
    peak = _network_saved_bytes(ckpt, L, H, B)
    assert segment <= peak <= 2 * segment + boundaries + _loss_bytes(L, B)
    assert peak < b_long / 10

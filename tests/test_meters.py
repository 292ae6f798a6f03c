"""Saved-bytes meter: counts each storage once, excludes parameters, releases with the graph,
grows with T for bptt and not for tbptt."""
import torch

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

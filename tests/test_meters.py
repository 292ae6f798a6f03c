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
    """(saved-bytes peak, state bytes) of one training step on the adding task."""
    task = TASKS.get("adding")(T)
    torch.manual_seed(0)
    net = build_network("lstm", task.input_size, hidden, task.output_size)
    batch = next(task.stream(0, "train", batch_size))
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=0.01), clip=None)
    meter = SavedBytesMeter(list(net.parameters()) + batch.tensors())
    with meter.measure():
        method.train_step(net, batch, updater, None)
    assert meter.current == 0
    return meter.peak, method.state_bytes()


def _loss_bytes(T, batch_size):
    task = TASKS.get("adding")(T)
    batch = next(task.stream(0, "train", batch_size))
    out = torch.randn(batch.num_steps, batch_size, task.output_size, requires_grad=True)
    meter = SavedBytesMeter([out] + batch.tensors())
    with meter.measure():
        batch.loss(out)
    return meter.peak


def _bytes_per_step(H, B, L):
    """What autograd holds per step of bptt, the loss's share excluded: from its growth from L/2 to L."""
    bptt, half = METHODS.get("bptt")(), L // 2
    grew = _network_saved_bytes(bptt, L, H, B)[0] - _network_saved_bytes(bptt, half, H, B)[0]
    return (grew - (_loss_bytes(L, B) - _loss_bytes(half, B))) / (L - half)


def test_checkpointed_bptt_holds_one_segment():
    """ckpt_bptt at L = 1000 (segments of 32 steps): autograd holds one rerun segment at a time (at
    most two's worth with the loss's tensors), the checkpoints are its state, and both together are
    far below bptt's saved bytes (adding task: one loss term per sequence, so the loss's tensors are
    small beside the cell's)."""
    H, B, L, k = 16, 2, 1000, 32
    segment = k * _bytes_per_step(H, B, L)
    saved, state = _network_saved_bytes(METHODS.get("ckpt_bptt")(), L, H, B)
    assert segment <= saved <= 2 * segment + _loss_bytes(L, B)
    checkpoints, d_out = (L // k + 1) * 2 * B * H * 4, L * B * 1 * 4     # (h, c) per segment; d loss / d out
    assert state == checkpoints + d_out
    assert saved + state < _network_saved_bytes(METHODS.get("bptt")(), L, H, B)[0] / 10


def test_counts_what_torch_checkpoint_recomputes():
    """Non-reentrant torch.utils.checkpoint hides a segment's tensors behind its own hooks in the
    forward pass and keeps the recomputed ones in its own table during backward: the meter sees
    those, one segment (20 steps) at a time, on top of the checkpoints it saves."""
    from torch.utils.checkpoint import checkpoint
    from harness.models import run

    H, B, L, k = 16, 2, 200, 20
    task = TASKS.get("adding")(L)
    torch.manual_seed(0)
    net = build_network("lstm", task.input_size, H, task.output_size)
    batch = next(task.stream(0, "train", B))

    def segment(start, *carry):
        out, carry = run(net, batch.x, carry, start, start + k)
        return (out, *carry)

    meter = SavedBytesMeter(list(net.parameters()) + batch.tensors())
    with meter.measure():
        carry, outs = net.init_carry(B), []
        for start in range(0, L, k):
            out, *carry = checkpoint(segment, start, *carry, use_reentrant=False)
            outs.append(out)
        held_after_forward = meter.current
        batch.loss(torch.cat(outs)).backward()
    per_step = _bytes_per_step(H, B, L)
    checkpoints = (L // k) * 2 * B * H * 4
    assert held_after_forward <= checkpoints + _loss_bytes(L, B) < k * per_step   # nothing inside a segment
    assert k * per_step <= meter.peak <= 2 * k * per_step + checkpoints + _loss_bytes(L, B)
    assert meter.current == 0


def test_checkpointed_bptt_memory_budget_holds_one_step():
    """ckpt_bptt[memory=8] at L = 1000: autograd holds one rerun step at a time (the loss's tensors are
    taken beside the last step's graph), the method at most 8 carries and d loss / d outputs."""
    H, B, L = 16, 2, 1000
    saved, state = _network_saved_bytes(METHODS.get("ckpt_bptt")(memory=8), L, H, B)
    assert saved <= 2 * _bytes_per_step(H, B, L) + _loss_bytes(L, B)
    assert state <= 8 * 2 * B * H * 4 + L * B * 1 * 4

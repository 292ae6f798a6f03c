"""Exact BPTT that stores a few carries and reruns the rest of the forward pass during backward.

Two schedules:

`segment=k` (the default, k = round(sqrt(L))): gradient checkpointing (Chen, Xu, Zhang and Guestrin
2016, "Training deep nets with sublinear memory cost", arXiv:1604.06174, section 4):

    forward, without a graph: run the sequence, storing the carry at the start of every segment of k
        steps (the checkpoints) and the outputs; the loss on the outputs; d loss / d outputs
    for each segment, last first: rerun it from its checkpoint with a graph, and backpropagate into
        it d loss / d its outputs and the gradient of the carry at its end (from the segment after
        it), giving the parameters' gradient and the gradient of the carry at its start

Autograd holds one segment's activations at a time and the method L/k carries and d loss / d outputs:
O(sqrt(L) B H + L B out) memory for one extra forward pass (the outputs' gradient is small beside the
activations bptt keeps, but grows with L: 1.2 of 5.7 MiB at L = 1000, LSTM 128, batch 32, 10 outputs).

`memory=m`: Gruslys, Munos, Danihelka, Lanctot and Graves 2016, "Memory-efficient backpropagation
through time" (NeurIPS), BPTT-HSM: at most m carries stored at once (the initial one included), and
the fewest forward steps under that budget, by dynamic programming over (steps t, slots k):

    Q(t, 1) = t (t + 1) / 2                      (only the start held: rerun from it for every step)
    Q(1, k) = 1
    Q(t, k) = min over 1 <= y < t of  y + Q(t - y, k - 1) + Q(y, k)

where the split y means: run y steps from the start, store that carry, backpropagate the last t - y
steps with k - 1 slots, free it, then backpropagate the first y steps with k slots. Each step is
rerun with a graph and backpropagated on its own, so autograd holds one step at a time. The loss is
taken when the first step is reached in backward, the whole sequence having run forward once by then.
Planning costs O(L^2 m) arithmetic once per (L, m) (about a second at L = 1000, m = 100).

Either way the gradient, hence every update, is bitwise bptt's on CPU (tested): the values come from
the same kernels on the same inputs, and each parameter's gradient is summed in bptt's order, last
step first, by handing autograd the sum so far as the first term of each rerun piece's sum (the
`carried` roots below) instead of adding the piece's total to it afterwards, which rounds
differently. Saved bytes (what autograd holds) peak at the loss's tensors or one rerun piece; state
bytes are the stored carries at their most and d loss / d outputs, held outside autograd.
"""
import functools
import math

import numpy as np
import torch

from harness.config import ConfigError, positive_int
from harness.method import Method, tensor_bytes
from harness.models import run


@functools.lru_cache(maxsize=16)
def hsm_plan(L: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Gruslys et al.'s BPTT-HSM table: Q[t, k] forward steps to backpropagate t steps holding at most
    k carries, and Y[t, k] the split that achieves it (the first, on ties)."""
    Q, Y = np.zeros((L + 1, m + 1)), np.ones((L + 1, m + 1), dtype=np.int64)
    t = np.arange(L + 1)
    Q[:, 1] = t * (t + 1) / 2
    for k in range(2, m + 1):
        Q[: k + 1, k] = 2 * t[: k + 1] - 1      # as many slots as steps: store every carry (y = 1)
        for n in range(k + 1, L + 1):
            y = t[1:n]
            cost = y + Q[n - y, k - 1] + Q[y, k]
            i = int(np.argmin(cost))
            Q[n, k], Y[n, k] = cost[i], y[i]
    Q[0, :] = 0
    return Q, Y


class _Sweep:
    """Backpropagation through one batch piece by piece, last piece first, in bptt's order of sums."""

    def __init__(self, net, batch):
        self.net, self.batch, self.params = net, batch, list(net.parameters())
        self.outs, self.d_out, self.loss = [], None, None
        self.grads, self.d_end = None, None
        self.steps = 0             # step evaluations, forward and rerun (what Q counts)

    def forward(self, carry, s, e):
        """The carry at step e from the carry at step s, without a graph."""
        with torch.no_grad():
            out, carry = run(self.net, self.batch.x, carry, s, e)
        if self.d_out is None:     # still the first pass: its outputs make the loss
            self.outs.append(out)
        self.steps += e - s
        return carry

    def take_loss(self, last=None):
        out = torch.cat(self.outs + ([last] if last is not None else [])).requires_grad_()
        loss = self.batch.loss(out)
        (self.d_out,) = torch.autograd.grad(loss, out)
        self.loss, self.outs = loss.item(), None

    def rerun(self, start, s, e):
        """Rerun steps s..e-1 from `start` with a graph; backpropagate d loss / d their outputs and the
        gradient of the carry at e into them; keep the gradient of the carry at s for the piece before."""
        start = tuple(c.detach().requires_grad_() for c in start) if s > 0 else start
        out, end = run(self.net, self.batch.x, start, s, e)
        self.steps += e - s
        if self.d_out is None:
            self.take_loss(out.detach())
        roots, seeds = [out], [self.d_out[s:e]]
        if self.d_end is not None:
            roots, seeds = roots + list(end), seeds + list(self.d_end)
        if self.grads is not None:
            # created last, so autograd runs them first: the sum so far is each parameter's gradient's
            # first term, and the piece's steps are added to it one by one, as in bptt
            carried = [p.view_as(p) for p in self.params]
            roots, seeds = roots + carried, seeds + self.grads
        inputs = self.params + list(start) if s > 0 else self.params
        g = torch.autograd.grad(roots, inputs, seeds, allow_unused=True)
        self.grads = [torch.zeros_like(p) if x is None else x for p, x in zip(self.params, g)]
        self.d_end = [torch.zeros_like(c) if x is None else x for c, x in zip(start, g[len(self.params):])]


class CheckpointedBPTT(Method):
    name = "ckpt_bptt"
    description = "full BPTT storing a few carries and rerunning the rest of the forward pass in backward"
    paper = ("Chen, Xu, Zhang and Guestrin, Training deep nets with sublinear memory cost, arXiv:1604.06174, "
             "2016; memory=m: Gruslys et al., Memory-efficient backpropagation through time, NeurIPS 2016")
    gradient_kind = "exact"
    hyperparameters = {
        "segment": positive_int(None, "steps per segment (default round(sqrt(L)))", optional=True),
        "memory": positive_int(None, "at most this many carries stored at once, scheduled by dynamic "
                                     "programming (Gruslys et al.); instead of segment", optional=True),
    }
    test_params = [{}, {"segment": 2}, {"segment": 100}, {"memory": 3}]

    def validate(self):
        if self.segment and self.memory:
            raise ConfigError(f"method ckpt_bptt: segment={self.segment} and memory={self.memory} are two "
                              f"schedules; give one")
        self._state_bytes, self.held, self.steps = 0, 0, 0

    def check(self, spec):
        if self.memory and self.memory < spec.num_steps:
            hsm_plan(spec.num_steps, self.memory)   # planned before training

    def segments(self, L):
        """(start, end) of each segment; the last may be shorter."""
        k = self.segment or max(1, round(math.sqrt(L)))
        return [(s, min(s + k, L)) for s in range(0, L, k)]

    def gradient(self, net, batch, rng):
        sweep = _Sweep(net, batch)
        (self._by_memory if self.memory else self._by_segments)(sweep, tuple(net.init_carry(batch.batch_size)))
        self.steps = sweep.steps
        return sweep.loss, sweep.grads

    def _by_segments(self, sweep, carry):
        segments, checkpoints = self.segments(sweep.batch.num_steps), []
        for s, e in segments:
            checkpoints.append(carry)
            carry = sweep.forward(carry, s, e)
        sweep.take_loss()
        self._held(checkpoints, sweep.d_out)
        for (s, e), start in zip(reversed(segments), reversed(checkpoints)):
            sweep.rerun(start, s, e)
            checkpoints.pop()

    def _by_memory(self, sweep, carry):
        L = sweep.batch.num_steps
        m = min(self.memory, L)    # more slots than steps cannot help: Q(t, k) = Q(t, t) for k >= t
        # with a slot per step every split is y = 1 (store every carry; Q(t, t) = 2 t - 1): no table
        Y = hsm_plan(L, m)[1] if m < L else None
        # (start, steps, slots, carry at start); slots == 0: one step, from the carry `steps` before it
        tasks = [(0, L, m, carry)]
        while tasks:
            self._held({id(c[3]): c[3] for c in tasks}.values(), sweep.outs, sweep.d_out)
            s, t, k, carry = tasks.pop()
            if k == 0:                                     # Q(t, 1): rerun from the start, t steps on
                sweep.rerun(sweep.forward(carry, s, s + t) if t else carry, s + t, s + t + 1)
            elif t == 1:
                sweep.rerun(carry, s, s + 1)
            elif k == 1:                                   # last step first
                tasks.extend((s, j, 0, carry) for j in range(t))
            else:
                y = 1 if Y is None else int(Y[t, k])
                mid = sweep.forward(carry, s, s + y)
                tasks += [(s, y, k, carry), (s + y, t - y, k - 1, mid)]

    def _held(self, carries, *outputs):
        """Note the stored carries and the outputs (or their gradient) held outside autograd now."""
        carries = list(carries)
        self.held = max(self.held, len(carries))
        self._state_bytes = max(self._state_bytes, tensor_bytes(carries, *outputs))

    def state_bytes(self):
        return self._state_bytes

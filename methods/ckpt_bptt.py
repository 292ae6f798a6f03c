"""Exact BPTT with gradient checkpointing (Chen, Xu, Zhang and Guestrin 2016, "Training deep nets
with sublinear memory cost", arXiv:1604.06174, section 4; the recurrent case of their figure 3).

Split the sequence into segments of k steps (k = round(sqrt(L)) by default; `segment=k`):

    forward, without a graph: run the sequence, storing the carry at the start of every segment
        (the checkpoints) and the outputs
    loss on the outputs; d loss / d outputs
    for each segment, last first:
        rerun it from its checkpoint, with a graph
        backpropagate into it d loss / d its outputs and the gradient of the carry at its end
            (from the segment after it), giving the parameters' gradient and the gradient of the
            carry at its start (for the segment before it)

Autograd holds one segment's activations at a time, and the method L/k checkpoints: O(sqrt(L))
memory for one extra forward pass. The gradient, hence every update, is bitwise bptt's on CPU
(tested): the forward values are the same kernels' on the same inputs, and each parameter's gradient
is summed over the steps in bptt's order, last step first, by handing the sum so far to autograd
as the first term of the segment's sum (the `carried` roots below) instead of adding the segment's
total to it afterwards, which rounds differently.

Saved bytes (what autograd holds) peak at the loss's tensors or one rerun segment, whichever is
larger; state bytes are the checkpoints and d loss / d outputs, held outside autograd through the
backward pass.
"""
import math

import torch

from harness.config import positive_int
from harness.method import Method, tensor_bytes
from harness.models import run


class CheckpointedBPTT(Method):
    name = "ckpt_bptt"
    description = "full BPTT storing the carry every k steps and rerunning each segment in the backward pass"
    paper = "Chen, Xu, Zhang and Guestrin, Training deep nets with sublinear memory cost, arXiv:1604.06174, 2016"
    gradient_kind = "exact"
    hyperparameters = {
        "segment": positive_int(None, "steps per segment (default round(sqrt(L)))", optional=True),
    }
    test_params = [{}, {"segment": 2}, {"segment": 100}]

    def validate(self):
        self._state_bytes = 0

    def segments(self, L):
        """(start, end) of each segment; the last may be shorter."""
        k = self.segment or max(1, round(math.sqrt(L)))
        return [(s, min(s + k, L)) for s in range(0, L, k)]

    def gradient(self, net, batch, rng):
        params = list(net.parameters())
        segments = self.segments(batch.num_steps)
        with torch.no_grad():
            carry, checkpoints, outs = tuple(net.init_carry(batch.batch_size)), [], []
            for s, e in segments:
                checkpoints.append(carry)
                out, carry = run(net, batch.x, carry, s, e)
                outs.append(out)
        out = torch.cat(outs).requires_grad_()
        loss = batch.loss(out)
        (d_out,) = torch.autograd.grad(loss, out)
        del outs, out   # the outputs' values are not needed again, only d_out
        self._state_bytes = max(self._state_bytes, tensor_bytes(checkpoints, d_out))

        grads, d_end = None, None
        for (s, e), start in zip(reversed(segments), reversed(checkpoints)):
            start = tuple(c.requires_grad_() for c in start) if s > 0 else start
            out, end = run(net, batch.x, start, s, e)
            roots, seeds = [out], [d_out[s:e]]
            if d_end is not None:
                roots, seeds = roots + list(end), seeds + list(d_end)
            if grads is not None:
                # created last, so autograd runs them first: the sum so far is each parameter's
                # gradient's first term, and the segment's steps are added to it one by one, as in bptt
                carried = [p.view_as(p) for p in params]
                roots, seeds = roots + carried, seeds + grads
            inputs = params + list(start) if s > 0 else params
            g = torch.autograd.grad(roots, inputs, seeds, allow_unused=True)
            grads = [torch.zeros_like(p) if x is None else x for p, x in zip(params, g)]
            d_end = [torch.zeros_like(c) if x is None else x for c, x in zip(start, g[len(params):])]
            checkpoints.pop()
        return loss.item(), grads

    def state_bytes(self):
        return self._state_bytes

"""Exact BPTT with gradient checkpointing (Chen, Xu, Zhang and Guestrin 2016, "Training deep nets
with sublinear memory cost", section 4 and its recurrent-network case).

Split the sequence into segments of k steps (k = round(sqrt(L)) by default, `segment=k` to choose).
Forward: run every segment keeping only the carry at its start (the checkpoint) and its outputs;
nothing inside a segment is saved. Backward: when the gradient reaches a segment, rerun that segment
from its stored carry with the same parameters, keeping its activations, and backpropagate through
it. Autograd then holds L/k carries plus one segment's activations instead of L steps' worth:
O(sqrt(L)) for k = sqrt(L), for one extra forward pass over the sequence.

It uses non-reentrant `torch.utils.checkpoint`: the recomputed tensors are handed to the nodes of the
one graph the forward pass built, so the backward pass runs the same nodes in the same order as
`bptt`'s, and the gradient, hence every update, is bitwise `bptt`'s on CPU (tested). The meter
(harness/meters.py) counts the recomputed segment while it is held.
"""
import math

import torch
from torch.utils.checkpoint import checkpoint

from harness.method import Method, grads_of
from harness.config import positive_int


class CheckpointedBPTT(Method):
    name = "ckpt_bptt"
    description = "full BPTT storing the carry every k steps and recomputing each segment in backward"
    paper = "Chen, Xu, Zhang and Guestrin, Training deep nets with sublinear memory cost, arXiv:1604.06174, 2016"
    gradient_kind = "exact"
    hyperparameters = {
        "segment": positive_int(None, "steps per checkpointed segment (default round(sqrt(L)))", optional=True),
    }
    test_params = [{}, {"segment": 2}, {"segment": 100}]

    def segments(self, L):
        """(start, end) of each segment."""
        k = self.segment or max(1, round(math.sqrt(L)))
        return [(s, min(s + k, L)) for s in range(0, L, k)]

    @staticmethod
    def _run_segment(net, x, start, end, *carry):
        """Steps start..end-1 from `carry`: (output_start, ..., output_{end-1}, *final carry)."""
        outs = []
        for t in range(start, end):
            out, carry = net.step(x[t], carry)
            outs.append(out)
        return (*outs, *carry)

    def gradient(self, net, batch, rng):
        carry, outs = tuple(net.init_carry(batch.batch_size)), []
        for start, end in self.segments(batch.num_steps):
            # the cells draw no random numbers (no generator state to replay) and recompute bitwise the
            # same tensors (tested), so checkpoint's per-tensor metadata check is skipped: it cost 1.3x
            result = checkpoint(self._run_segment, net, batch.x, start, end, *carry,
                                use_reentrant=False, preserve_rng_state=False, determinism_check="none")
            outs.extend(result[:end - start])
            carry = tuple(result[end - start:])
        loss = batch.loss(torch.stack(outs))
        return loss.item(), grads_of(loss, net)

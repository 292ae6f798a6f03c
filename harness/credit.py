"""Credit by lag (DESIGN.md): the norm of the gradient that reaches the hidden state d steps before
each loss term, against d, as the method's own gradient computation delivers it.

For each loss term t (a time step where the loss counts), the method's `gradient` is run on the
batch with only that step's loss kept (same normaliser, so the terms add up to the sequence loss),
while every hidden state h_s the network produces carries a tensor hook that records the gradient
arriving at it. The step index s of a call to `net.step` is the row of `batch.x` it reads, so a
method that reruns steps (TBPTT with k2 > k1) or runs them in windows is measured as it computes.
What a truncated method cuts never reaches its hook: its credit beyond the window is exactly 0.

credit[d] = mean over loss terms t >= d of |dL_t/dh_{t-d}|, the Frobenius norm over the batch and
the hidden units. Methods whose gradient does not flow back through the hidden states by autograd
(forward-mode, online methods) declare `credit_by_lag = None` and get no curve.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .task import Batch

MAX_TERMS = 24   # loss terms measured, evenly spaced, the last always included; each costs one gradient


class _OneTerm(Batch):
    """The batch with the loss kept at one step, divided by the whole batch's normaliser."""

    def __init__(self, batch: Batch, t: int):
        mask = torch.zeros_like(batch.mask)
        mask[t] = batch.mask[t]
        super().__init__(batch.x, batch.y, mask, batch.score_mask, batch.loss_kind)
        self._normaliser = batch.normaliser

    @property
    def normaliser(self):
        return self._normaliser


def loss_terms(batch: Batch, max_terms: int = MAX_TERMS) -> list[int]:
    steps = [t for t in range(batch.num_steps) if batch.mask[t].any()]
    if len(steps) <= max_terms:
        return steps
    pick = np.unique(np.round(np.linspace(0, len(steps) - 1, max_terms)).astype(int))
    return [steps[i] for i in pick]


class Unmatched(RuntimeError):
    """The method stepped the network on inputs that are not rows of batch.x (it copied them)."""


def gradients_at_hidden(method, net, batch: Batch, rng: torch.Generator) -> torch.Tensor:
    """[L, B, H]: the gradient the method's `gradient` delivers to each hidden state h_s of `batch`
    (summed over every copy of h_s it computes)."""
    L = batch.num_steps
    rows = {batch.x[t].data_ptr(): t for t in range(L)}
    arrived: dict[int, torch.Tensor] = {}
    step = net.step

    def hooked_step(x_t, carry):
        out, carry = step(x_t, carry)
        s = rows.get(x_t.data_ptr())
        if s is None:
            raise Unmatched("credit by lag: net.step was given an input that is not a row of batch.x")
        h = net.hidden(carry)
        if h.requires_grad:
            def record(grad, s=s):
                arrived[s] = arrived[s] + grad.detach() if s in arrived else grad.detach().clone()
            h.register_hook(record)
        return out, carry

    net.step = hooked_step  # an instance attribute shadows the class's method until deleted
    try:
        method.gradient(net, batch, rng)
    finally:
        del net.step
    H = net.hidden(net.init_carry(batch.batch_size)).shape[-1]
    grads = torch.zeros(L, batch.batch_size, H, dtype=torch.float64)
    for s, g in arrived.items():
        grads[s] = g.double()
    return grads


def measure(method, net, batch: Batch, rng: torch.Generator, max_terms: int = MAX_TERMS) -> dict | None:
    """{"lag": [0..L-1], "norm": mean |dL_t/dh_{t-d}| per lag, "terms": loss terms per lag}; None
    for a method that declares credit by lag undefined."""
    if getattr(method, "credit_by_lag", None) != "autograd":
        return None
    L = batch.num_steps
    total, count = np.zeros(L), np.zeros(L, dtype=int)
    for t in loss_terms(batch, max_terms):
        try:
            grads = gradients_at_hidden(method, net, _OneTerm(batch, t), rng)
        except Unmatched as exc:  # a diagnostic must not cost the run it follows
            warnings.warn(f"{exc}; no credit-by-lag curve for {method.label}")
            return None
        norms = grads[: t + 1].flatten(1).norm(dim=1).numpy()   # norms[s] for s = 0..t
        total[: t + 1] += norms[::-1]                            # lag d = t - s
        count[: t + 1] += 1
    norm = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return {"lag": list(range(L)), "norm": [None if np.isnan(v) else float(v) for v in norm],
            "terms": count.tolist()}

"""Immediate Jacobians of one cell step, per lane, without reverse-mode torch.func (which refuses to run
under the saved-bytes meter) and without finite differences.

Every cell in torch's layout sees its weights only through the two pre-activations
    gi = W_ih x + b_ih,   gh = W_hh h + b_hh,
so d state'/d theta is known from D_i = d state'/d gi and D_h = d state'/d gh: the W_ih block is
D_i (x) x^T, the b_ih block D_i, and likewise for the hidden side. `STEP_FROM_PREACTIVATIONS` holds each
cell's formula as a function of (gi, gh, state) (the formulas of the cells' docstrings; a test checks
them against the fused kernels); its derivatives are taken by forward-mode AD (`torch.func.jvp`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.models import GRUCell, LSTMCell, RNNCell


def _rnn(gi, gh, state):
    return (torch.tanh(gi + gh),)


def _lstm(gi, gh, state):
    h, c = state
    i, f, g, o = (gi + gh).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru(gi, gh, state):
    (h,) = state
    ir, iz, in_ = gi.chunk(3, -1)
    hr, hz, hn = gh.chunk(3, -1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return ((1 - z) * n + z * h,)


STEP_FROM_PREACTIVATIONS = {RNNCell: _rnn, LSTMCell: _lstm, GRUCell: _gru}


def step_function(cell):
    try:
        return STEP_FROM_PREACTIVATIONS[type(cell)]
    except KeyError:
        raise TypeError(f"no pre-activation form for {type(cell).__name__}") from None


def preactivations(cell, x, h):
    return (F.linear(x, cell.weight_ih.detach(), cell.bias_ih.detach()),
            F.linear(h, cell.weight_hh.detach(), cell.bias_hh.detach()))


def split_state(s: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    return tuple(s.chunk(n, -1))


def lane_jacobians(cell, gi, gh, state):
    """(D_i [B, S, G], D_h [B, S, G], D_s [B, S, S]): the derivatives of state' (the carry's tensors
    concatenated) by gi, gh and, directly, by the state (not through gh). One forward-mode pass whose
    tangents are the basis vectors, the batch replicated once per column."""
    step, n = step_function(cell), len(state)
    B, G = gi.shape
    s = torch.cat(state, -1)
    S = s.shape[1]
    C = 2 * G + S
    eye = torch.eye(C, dtype=gi.dtype, device=gi.device)[:, None, :].expand(C, B, C)
    primals = tuple(t.expand(C, B, t.shape[1]).contiguous() for t in (gi, gh, s))
    tangents = tuple(t.contiguous() for t in (eye[..., :G], eye[..., G:2 * G], eye[..., 2 * G:]))
    _, cols = torch.func.jvp(lambda a, b, c: torch.cat(step(a, b, split_state(c, n)), -1), primals, tangents)
    jac = cols.permute(1, 2, 0)                     # [B, S, C]
    return jac[..., :G], jac[..., G:2 * G], jac[..., 2 * G:]

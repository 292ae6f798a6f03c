"""One-step derivatives of the cells, per lane, for forward-mode (online) methods: without
reverse-mode torch.func (which refuses to run under the saved-bytes meter) and without finite
differences.

Every cell in torch's layout sees its weights only through the two pre-activations
    gi = W_ih x + b_ih,   gh = W_hh h + b_hh,
so d state'/d theta is known from D_i = d state'/d gi and D_h = d state'/d gh: the W_ih block is
D_i (x) x^T, the b_ih block D_i, and likewise for the hidden side. `STEP_FROM_PREACTIVATIONS` holds each
cell's formula as a function of (gi, gh, state) (the formulas of the cells' docstrings;
tests/test_jacobians.py checks them against the cells); `lane_jacobians` takes its derivatives by
forward-mode AD (`torch.func.jvp`).

Every cell is also unit-wise: unit k's next state (h_k, and c_k for the LSTM) depends only on unit
k's own pre-activations (rows g = j H + k of gi and gh, one per gate j) and, directly, on unit k's own
state. `unit_jacobians` gives those derivatives in closed form, in the layout of the parameter rows
(what SnAp-1, e-prop and RFLO carry); a test checks them against `lane_jacobians`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.models import GRUCell, LeakyRNNCell, LSTMCell, RNNCell


def _rnn(gi, gh, state):
    return (torch.tanh(gi + gh),)


def _leaky(gi, gh, state, a):
    (h,) = state
    return ((1 - a) * h + a * torch.tanh(gi + gh),)


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


STEP_FROM_PREACTIVATIONS = {RNNCell: _rnn, LSTMCell: _lstm, GRUCell: _gru, LeakyRNNCell: _leaky}


def step_function(cell):
    """The cell's step as a function of (gi, gh, state) -> next state (a tuple)."""
    try:
        f = STEP_FROM_PREACTIVATIONS[type(cell)]
    except KeyError:
        raise TypeError(f"no pre-activation form for {type(cell).__name__}") from None
    return functools.partial(f, a=cell.alpha) if isinstance(cell, LeakyRNNCell) else f


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


@dataclass
class UnitJacobians:
    """The one-step derivatives of each unit's own state, per lane, for state components s (h; and c
    for the LSTM) in the cell's `state_names` order:

    Ci[s]     [B, G]  d s'_k / d gi_g for every parameter row g, k = g mod H being the row's unit
    Ch[s]     [B, G]  the same by gh (the same tensor as Ci[s] where the cell uses gi + gh)
    Ds[s][r]  [B, H]  d s'_k / d r_k directly (not through gh = W_hh h + b_hh); a float where it is the
                      same for every unit and lane (the leak), None where it is zero by construction

    So the W_ih row g of unit k moves s'_k by Ci[s][:, g] [x_t; 1] (and no other unit), the W_hh row by
    Ch[s][:, g] [h_{t-1}; 1]."""

    Ci: list[torch.Tensor]
    Ch: list[torch.Tensor]
    Ds: list[list[torch.Tensor | float | None]]


@dataclass
class LSTMParts:
    """One LSTM step's gates and the derivatives of (h', c') by what feeds them (per lane, [B, H]
    each, dc_dpre [B, 3H]): c' = f c + i g, h' = o tanh(c')."""

    f: torch.Tensor
    o: torch.Tensor
    dc_dpre: torch.Tensor     # d c' / d (pre-activations of i, f, g): g i (1 - i) | c f (1 - f) | i (1 - g^2)
    dh_dc: torch.Tensor       # d h' / d c' = o (1 - tanh(c')^2)
    dh_dpre_o: torch.Tensor   # d h' / d (pre-activation of o) = tanh(c') o (1 - o)


def lstm_parts(gi, gh, c) -> LSTMParts:
    i, f, g, o = (gi + gh).chunk(4, -1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    tc = torch.tanh(f * c + i * g)
    return LSTMParts(f, o, torch.cat([g * i * (1 - i), c * f * (1 - f), i * (1 - g * g)], -1), o * (1 - tc * tc),
                     tc * o * (1 - o))


def unit_jacobians(cell, gi, gh, state) -> UnitJacobians:
    """`UnitJacobians` of one step of `cell` from `state` with pre-activations (gi, gh), in closed form."""
    if isinstance(cell, (RNNCell, LeakyRNNCell)):
        a = cell.alpha if isinstance(cell, LeakyRNNCell) else 1.0
        t = torch.tanh(gi + gh)
        d = (1 - t * t) * a if a != 1.0 else 1 - t * t
        return UnitJacobians([d], [d], [[1 - a if a != 1.0 else None]])
    if isinstance(cell, LSTMCell):
        lstm = lstm_parts(gi, gh, state[1])
        dc = torch.cat([lstm.dc_dpre, torch.zeros_like(lstm.o)], -1)
        dh = dc * lstm.dh_dc.repeat(1, 4)
        dh[:, 3 * lstm.o.shape[1]:] = lstm.dh_dpre_o
        return UnitJacobians([dh, dc], [dh, dc], [[None, lstm.dh_dc * lstm.f], [None, lstm.f]])
    if isinstance(cell, GRUCell):
        (h,) = state
        ir, iz, in_ = gi.chunk(3, -1)
        hr, hz, hn = gh.chunk(3, -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        dn = (1 - z) * (1 - n * n)                     # d h'_k / d (pre-activation of n_k)
        dr, dz = dn * hn * r * (1 - r), (h - n) * z * (1 - z)
        return UnitJacobians([torch.cat([dr, dz, dn], -1)], [torch.cat([dr, dz, dn * r], -1)], [[z]])
    raise TypeError(f"no unit Jacobians for {type(cell).__name__}")

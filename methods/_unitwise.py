"""What snap1, eprop and rflo share: an influence estimate kept per unit (e-prop's LSTM has its own,
leaner, path in methods/eprop.py).

Each of them keeps, per lane, the influence of every cell parameter only on the state of the unit
whose parameter row it is: the rows g = j H + k (gate j) of W_ih, b_ih, W_hh, b_hh feed unit k and no
other in one step, so the estimate is m[s] [G, B, V], the influence of row g's parameters (columns
v_t = [x_t; 1; h_{t-1}; 1]) on unit k's state component s (h, and c for the LSTM), the same size as the
cell's gradient per lane and component. One step of the recursion, per unit k, with the unit's
Jacobian block J[s][r] (what the method keeps of d s_t,k / d r_{t-1,k}, `unit_jacobian`) and the
immediate derivatives Ci, Ch of `harness.jacobians.unit_jacobians`:

    m_t[s][g] = sum_r J[s][r] m_{t-1}[r][g] + Ci[s][g] [x_t; 1] | Ch[s][g] [h_{t-1}; 1]
    grad[g]  += sum_s sum_lanes signal_t[s_k] m_t[s][g]

(the immediate term is exact: it is the only place the row's parameters enter at step t).
"""
from __future__ import annotations

import torch

from harness.jacobians import UnitJacobians, preactivations, unit_jacobians
from harness.online import OnlineMethod


class UnitwiseInfluence(OnlineMethod):
    def unit_jacobian(self, cell, units: UnitJacobians, B: int) -> list[list]:
        """J[s][r] [B, H] (or a float, or None for zero): how unit k's influence on its state component r
        at t-1 is carried to component s at t."""
        raise NotImplementedError

    def unit_terms(self, cell, x, prev, new) -> UnitJacobians:
        """The step's one-step derivatives (tests override this to plant a bug)."""
        return unit_jacobians(cell, *preactivations(cell, x, prev[0]), prev)

    def begin(self, cell, B):
        G, V, n = cell.weight_hh.shape[0], cell.input_size + cell.hidden_size + 2, len(cell.state_names)
        assert cell.state_names[0] == "h"
        # A component that no J[s][r] reads and that reads none has no memory: its influence is the
        # step's immediate term, formed only when credited (e-prop's tanh RNN). J's pattern is fixed per cell.
        zero = cell.weight_hh.new_zeros(1, G)
        J = self.unit_jacobian(cell, unit_jacobians(cell, zero, zero, tuple(zero[:, :cell.hidden_size]
                                                                            for _ in range(n))), 1)
        self.kept = [r for r in range(n) if any(J[s][r] is not None for s in range(n))
                     or any(J[r][s] is not None for s in range(n))]
        w = cell.weight_hh
        self.m = [self.zeroed_buffer(("m", r), (G, B, V), w) if r in self.kept else None for r in range(n)]
        # components that mix need a second buffer (a workspace: m_{t-1} is read while m_t is written)
        self.work = [self.zeroed_buffer(("work", r), (G, B, V), w) if r in self.kept and len(self.kept) > 1
                     else None for r in range(n)]

    def advance(self, cell, x, prev, new, rng):
        units = self.unit_terms(cell, x, prev, new)
        J = self.unit_jacobian(cell, units, x.shape[0])
        gates, I = cell.weight_hh.shape[0] // cell.hidden_size, cell.input_size
        v = self.input_vector(x, prev[0])
        mixing = len(self.kept) > 1
        if mixing:
            self.m, self.work = self.work, self.m            # work: m_{t-1}; m: overwritten below
        old = self.work if mixing else self.m
        for s in self.kept:
            m, first = self.m[s], True
            for r in range(len(J)):
                j = J[s][r]
                if j is None:
                    continue
                j = j if isinstance(j, float) else unit_rows(j, gates)
                if first:
                    torch.mul(old[r], j, out=m) if mixing else m.mul_(j)
                elif isinstance(j, float):
                    m.add_(old[r], alpha=j)
                else:
                    m.addcmul_(old[r], j)
                first = False
            if first:
                m.zero_()
            add_immediate(m, units.Ci[s], units.Ch[s], v, I)
        self.step_terms = (units, v, gates, I)

    def credit(self, signal):
        units, v, gates, I = self.step_terms
        H = signal.shape[1] // len(self.m)
        for s, m in enumerate(self.m):
            sig = signal[:, s * H:(s + 1) * H]
            if not sig.any():   # the LSTM's readout never sees c: its signal is zero
                continue
            if m is not None:
                self.grad += torch.bmm(unit_rows(sig, gates).view(-1, 1, sig.shape[0]), m)[:, 0]
                continue
            rows = unit_rows(sig, gates)[..., 0]                                      # [G, B]
            if units.Ci[s] is units.Ch[s]:
                self.grad += (rows * units.Ci[s].T) @ v
            else:
                self.grad[:, :I + 1] += (rows * units.Ci[s].T) @ v[:, :I + 1]
                self.grad[:, I + 1:] += (rows * units.Ch[s].T) @ v[:, I + 1:]

    def carried(self):
        return [t for t in self.m if t is not None]


def unit_rows(t: torch.Tensor, gates: int) -> torch.Tensor:
    """[B, H] per unit -> [G, B, 1] per parameter row g = j H + k, contiguous (a transposed operand is
    several times slower)."""
    return t.T.repeat(gates, 1)[:, :, None]


def add_immediate(m, Ci, Ch, v, I):
    """m [G, B, V] += Ci [B, G] (x) [x; 1] | Ch [B, G] (x) [h; 1]."""
    if Ci is Ch:
        m.addcmul_(Ci.T.contiguous()[:, :, None], v[None])
    else:
        m[..., :I + 1].addcmul_(Ci.T.contiguous()[:, :, None], v[None, :, :I + 1])
        m[..., I + 1:].addcmul_(Ch.T.contiguous()[:, :, None], v[None, :, I + 1:])

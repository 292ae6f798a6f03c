"""What snap1, eprop and rflo share: an influence estimate kept per unit.

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
        G, V = cell.weight_hh.shape[0], cell.input_size + cell.hidden_size + 2
        assert cell.state_names[0] == "h"
        self.m = [cell.weight_hh.new_zeros(G, B, V) for _ in cell.state_names]
        self.work = [torch.empty_like(m) for m in self.m] if len(self.m) > 1 else []

    def advance(self, cell, x, prev, new, rng):
        units = self.unit_terms(cell, x, prev, new)
        J = self.unit_jacobian(cell, units, x.shape[0])
        gates, I = cell.weight_hh.shape[0] // cell.hidden_size, cell.input_size

        def rows(t):   # [B, H] per unit -> [G, B, 1] per parameter row (g = j H + k)
            return t.repeat(1, gates).T[:, :, None]

        v = self.input_vector(x, prev[0])[None]        # [1, B, V]
        n = len(self.m)
        out = self.m if n == 1 else self.work          # one component: in place
        for s in range(n):
            m = out[s]
            terms = [(r, J[s][r]) for r in range(n) if J[s][r] is not None]
            if n == 1:
                if terms:
                    j = terms[0][1]
                    m.mul_(j if isinstance(j, float) else rows(j))
                else:
                    m.zero_()
            else:
                m.zero_()
                for r, j in terms:
                    if isinstance(j, float):
                        m.add_(self.m[r], alpha=j)
                    else:
                        m.addcmul_(self.m[r], rows(j))
            if units.Ci[s] is units.Ch[s]:
                m.addcmul_(rows_g(units.Ci[s]), v)
            else:
                m[..., :I + 1].addcmul_(rows_g(units.Ci[s]), v[..., :I + 1])
                m[..., I + 1:].addcmul_(rows_g(units.Ch[s]), v[..., I + 1:])
        if n > 1:
            self.m, self.work = self.work, self.m

    def credit(self, signal):
        H = signal.shape[1] // len(self.m)
        gates = self.m[0].shape[0] // H
        for s, m in enumerate(self.m):
            sig = signal[:, s * H:(s + 1) * H]
            if sig.any():   # the LSTM's readout never sees c: its signal is zero
                self.grad += torch.bmm(sig.repeat(1, gates).T[:, None, :], m)[:, 0]

    def carried(self):
        return list(self.m)


def rows_g(c: torch.Tensor) -> torch.Tensor:
    """[B, G] per parameter row -> [G, B, 1]."""
    return c.T[:, :, None]

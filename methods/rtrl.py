"""Real-time recurrent learning (Williams and Zipser 1989): exact forward-mode gradients.

Per lane, the influence matrix M_t = d s_t / d theta (s = h, or (h, c) for the LSTM; theta the cell's
parameters) is carried forward and reset to zero at the start of the sequence:

    M_t = J_t M_{t-1} + F_t,     J_t = d s_t / d s_{t-1},   F_t = d s_t / d theta (immediate)
    grad += (d loss_t / d s_t) M_t

F_t is D_i (x) [x_t; 1] for (W_ih, b_ih) and D_h (x) [h_{t-1}; 1] for (W_hh, b_hh) (harness/jacobians.py).
Tanh RNN (structured path): with D_t = diag(1 - h_t^2), D_i = D_h = D_t and J_t = D_t W_hh, so
M_t = (D_t W_hh) M_{t-1} + D_t (x) v_t: per lane one H x H by H x (H V) product into a preallocated
workspace (the D_t scaling folded into the small factor, so M is read and written once per step;
the columns blocked so that each product fits the cache), then the immediate term added where the
state unit is the parameter's row. The leaky RNN (leak a) takes the same path with D_t = a diag(1 -
tanh(u_t)^2) and J_t = (1 - a) I + D_t W_hh. LSTM and GRU (generic path): J_t, D_i, D_h by forward-mode
AD, then a batched product. Cost per step O(S^2 P) = O(H^4), memory B S P: the carried state is M (state_bytes); the
product needs a workspace of the same size, counted in the refusal estimate.
"""
import torch

from harness.config import ConfigError, Param
from harness.jacobians import lane_jacobians, preactivations, unit_jacobians
from harness.method import Regime
from harness.models import CELLS, LeakyRNNCell, RNNCell
from harness.online import ONLINE_PARAMS, OnlineMethod


def influence_shape(cell: str, input_size: int, hidden: int) -> tuple[int, int]:
    """(S, P): rows (state size) and columns (cell parameters) of one lane's influence matrix."""
    cls = CELLS[cell]
    return hidden * len(cls.state_names), cls.gates * hidden * (input_size + hidden + 2)


class RTRL(OnlineMethod):
    name = "rtrl"
    description = "real-time recurrent learning: exact influence matrix d state / d theta carried forward"
    paper = ("Williams and Zipser, A learning algorithm for continually running fully recurrent neural "
             "networks, Neural Computation 1989")
    gradient_kind = "exact"
    hyperparameters = {**ONLINE_PARAMS,
                       "max_gib": Param(4.0, float, "refuse runs whose influence matrix and workspace exceed "
                                        "this many GiB", check=lambda v: v > 0, allowed="a positive number")}
    test_params = [{}, {"update_every": 1}]
    exact_regimes = [Regime("the full influence matrix: exact for every network and sequence")]
    structured = True   # the tanh RNN's Kronecker path; False forces the generic path (tests compare them)

    def check(self, spec):
        super().check(spec)
        S, P = influence_shape(spec.cell, spec.input_size, spec.hidden_size)
        item = torch.empty((), dtype=spec.dtype).element_size()
        need = 2 * spec.batch_size * S * P * item
        if need > self.max_gib * 2**30:
            raise ConfigError(f"method rtrl: the influence matrix would take {need / 2 ** 31:.1f} GiB (batch "
                              f"{spec.batch_size} x state {S} x {P} cell parameters x {item} bytes), "
                              f"{need / 2 ** 30:.1f} GiB with its workspace, over max_gib={self.max_gib}; "
                              f"lower --hidden or --batch, or raise max_gib")

    def begin(self, cell, B):
        I, H, G = cell.input_size, cell.hidden_size, cell.weight_hh.shape[0]
        V = I + H + 2
        self.fast = self.structured and isinstance(cell, (RNNCell, LeakyRNNCell))
        w = cell.weight_hh
        if self.fast:
            # [lane, q, s, k', j] with parameter row k = q kc + k': the product runs as H / kc products of
            # H x H by H x (kc V), each small enough for the cache (about 1.5x faster than one long one)
            kc = next(c for c in (8, 4, 2, 1) if H % c == 0 and (c * V <= 2048 or c == 1))
            self.M, self.work = w.new_zeros(B, H // kc, H, kc, V), w.new_empty(B, H // kc, H, kc, V)
            k = torch.arange(H, device=w.device)
            self.diag = (k // kc, k, k % kc)   # where s == k: the immediate term D_t (x) v_t goes there
        else:
            S = H * len(cell.state_names)
            self.M = w.new_zeros(B, S, G, V)

    def advance(self, cell, x, prev, new, rng):
        h_prev, I, H = prev[0], cell.input_size, cell.hidden_size
        if self.fast:
            B = x.shape[0]
            if isinstance(cell, RNNCell):
                D, leak = 1 - new[0] ** 2, None
            else:
                units = unit_jacobians(cell, *preactivations(cell, x, h_prev), prev)
                D, leak = units.Ci[0], units.Ds[0][0]                             # a (1 - tanh^2), 1 - a
            DW = D[:, :, None] * cell.weight_hh                                   # [B, H, H]
            n = self.M.shape[1]
            for b in range(B):
                torch.bmm(DW[b].expand(n, H, H), self.M[b].view(n, H, -1), out=self.work[b].view(n, H, -1))
            if leak is not None:
                self.work.add_(self.M, alpha=leak)
            q, s, k = self.diag
            self.work[:, q, s, k] += D[:, :, None] * self.input_vector(x, h_prev)[:, None, :]
            self.M, self.work = self.work, self.M
            return
        gi, gh = preactivations(cell, x, h_prev)
        Di, Dh, J = lane_jacobians(cell, gi, gh, prev)
        J[:, :, :H] += Dh @ cell.weight_hh
        B, S, G, V = self.M.shape
        M = torch.bmm(J, self.M.view(B, S, G * V)).view(B, S, G, V)
        one = x.new_ones(x.shape[0], 1)
        M[..., :I + 1] += Di[..., None] * torch.cat([x, one], 1)[:, None, None, :]
        M[..., I + 1:] += Dh[..., None] * torch.cat([h_prev, one], 1)[:, None, None, :]
        self.M = M

    def credit(self, delta):
        if self.fast:
            self.grad += torch.einsum("bs,bqskv->qkv", delta, self.M).reshape(self.grad.shape)
        else:
            self.grad += torch.einsum("bs,bsgv->gv", delta, self.M)

    def carried(self):
        return [self.M]

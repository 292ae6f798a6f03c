"""Kronecker-Factored RTRL (Mujika, Meier and Steger, NeurIPS 2018), for the tanh RNN and the leaky RNN.

In the tanh RNN every weight and bias enters as W v_t with v_t = [x_t; 1; h_{t-1}; 1] (biases folded
into the input vector), so d h_t / d W = A (x) u with A = d h_t / d (W v_t) rows. Per lane, the
influence matrix is kept as one Kronecker product u (x) A, reset to zero at the start of the
sequence; each step, with H_t = diag(1 - h_t^2) W_hh, D_t = diag(1 - h_t^2) and two fresh signs c1, c2:

    p1 = sqrt(|H_t A| / |u|),   p2 = sqrt(|D_t| / |v_t|)        (variance-minimising rescaling)
    u <- c1 p1 u + c2 p2 v_t
    A <- (c1 / p1) H_t A + (c2 / p2) D_t
    grad += (A^T d loss_t / d h_t) (x) u

The cross terms have the sign c1 c2, of mean zero, so E[u (x) A] is the exact influence matrix.
The leaky RNN (leak a) has the same structure with D_t = a diag(1 - tanh(u_t)^2) and
H_t = (1 - a) I + D_t W_hh. Carried state: u [B, V] and A [B, H, H]; cost O(H^3) per step. Other cells
are refused: the LSTM's factorisation needs the state (c, h) and the GRU in torch's layout separate
factor pairs per gate (DESIGN.md), neither implemented here.
"""
import torch

from harness import online
from harness.jacobians import preactivations, unit_jacobians
from harness.models import RNNCell
from harness.online import ONLINE_PARAMS, OnlineMethod, lane_norm


class KFRTRL(OnlineMethod):
    name = "kf_rtrl"
    description = "Kronecker-factored RTRL: the influence matrix as one random Kronecker product per lane"
    paper = "Mujika, Meier and Steger, Approximating Real-Time Recurrent Learning with Random Kronecker Factors, NeurIPS 2018"
    gradient_kind = "stochastic"
    hyperparameters = ONLINE_PARAMS
    cells = ("rnn", "leaky")
    test_params = [{}, {"update_every": 2}]

    def refusal(self, cell):
        return ("its one Kronecker pair needs every weight to enter as W v_t on a single state; the LSTM's "
                "state (h, c) and torch's GRU layout need several factor pairs, not implemented")

    def begin(self, cell, B):
        H, w = cell.hidden_size, cell.weight_hh
        self.u, self.A = w.new_zeros(B, cell.input_size + H + 2), w.new_zeros(B, H, H)

    def advance(self, cell, x, prev, new, rng):
        if isinstance(cell, RNNCell):
            D = 1 - new[0] ** 2
            HA = D[:, :, None] * torch.matmul(cell.weight_hh, self.A)
        else:
            units = unit_jacobians(cell, *preactivations(cell, x, prev[0]), prev)
            D = units.Ci[0]                                                    # a (1 - tanh(u)^2)
            HA = torch.baddbmm(self.A, D[:, :, None] * cell.weight_hh, self.A, beta=units.Ds[0][0])
        v = self.input_vector(x, prev[0])
        c = self.signs(rng, (x.shape[0], 2), v)
        c1, c2 = c[:, :1], c[:, 1:]
        p1 = online.balance(lane_norm(HA), lane_norm(self.u), self.eps)[:, None]
        p2 = online.balance(lane_norm(D), lane_norm(v), self.eps)[:, None]
        if self.trace is not None:
            self.trace.append([(lane_norm(p1 * self.u), lane_norm(HA) / p1[:, 0]),
                               (lane_norm(p2 * v), lane_norm(D) / p2[:, 0])])
        self.u = c1 * p1 * self.u + c2 * p2 * v
        self.A = (c1 / p1)[:, :, None] * HA + (c2 / p2)[:, :, None] * torch.diag_embed(D)

    def credit(self, delta):
        self.grad += torch.einsum("bs,bsk->bk", delta, self.A).T @ self.u

    def carried(self):
        return [self.u, self.A]

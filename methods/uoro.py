"""Unbiased Online Recurrent Optimization (Tallec and Ollivier, ICLR 2018).

Per lane, a rank-one estimate s~ theta~^T of the influence matrix d s_t / d theta, reset to zero at the
start of the sequence; each step, with fresh signs nu in {-1, +1}^S, the same nu in both factors:

    rho0 = sqrt(|theta~| / |J s~|),   rho1 = sqrt(|nu^T F| / |nu|)      (variance-reducing rescaling)
    s~     <- rho0 J s~ + rho1 nu
    theta~ <- theta~ / rho0 + nu^T F / rho1
    grad   += (d loss_t / d s_t . s~) theta~

E[s~ theta~^T] = J M + F exactly (the cross terms change sign with nu), so the estimate is unbiased.
J s~ and nu^T F are exact: closed form for the tanh RNN (J s~ = D (W_hh s~), nu^T F = (D nu) (x) v with
D = 1 - h_t^2); for the LSTM and GRU, J s~ by forward-mode AD (`torch.func.jvp`) and nu^T F from the
per-lane derivatives of nu . s_t by the two pre-activations (one step of autograd). Carried state:
s~ [B, S] and theta~ [B, P]; cost per step O(H P), like one step of BPTT.
"""
import torch

from harness.models import RNNCell
from methods import _online as online
from methods._jacobians import preactivations, split_state, step_function
from methods._online import ONLINE_PARAMS, OnlineMethod, lane_norm


class UORO(OnlineMethod):
    name = "uoro"
    description = "unbiased online recurrent optimisation: rank-one random estimate of the influence matrix"
    paper = "Tallec and Ollivier, Unbiased Online Recurrent Optimization, ICLR 2018"
    gradient_kind = "stochastic"
    hyperparameters = ONLINE_PARAMS
    test_params = [{}, {"update_every": 2}]

    def begin(self, cell, B):
        S, G = cell.hidden_size * len(cell.state_names), cell.weight_hh.shape[0]
        w = cell.weight_hh
        self.s, self.theta = w.new_zeros(B, S), w.new_zeros(B, G, cell.input_size + cell.hidden_size + 2)

    def advance(self, cell, x, prev, new, rng):
        nu = self.signs(rng, self.s.shape, self.s)
        Js, a_in, a_hid = self.tangents(cell, x, prev, new, nu)
        one = x.new_ones(x.shape[0], 1)
        x1, h1 = torch.cat([x, one], 1), torch.cat([prev[0], one], 1)
        nuF = torch.cat([a_in[:, :, None] * x1[:, None, :], a_hid[:, :, None] * h1[:, None, :]], 2)

        rho0 = online.balance(lane_norm(self.theta), lane_norm(Js), self.eps)[:, None]
        rho1 = online.balance(lane_norm(nuF), lane_norm(nu), self.eps)[:, None]
        if self.trace is not None:
            self.trace.append([(lane_norm(rho0 * Js), lane_norm(self.theta) / rho0[:, 0]),
                               (lane_norm(rho1 * nu), lane_norm(nuF) / rho1[:, 0])])
        self.s = rho0 * Js + rho1 * nu
        self.theta = self.theta / rho0[:, :, None] + nuF / rho1[:, :, None]

    def tangents(self, cell, x, prev, new, nu):
        """(J s~, nu^T dF/d gi, nu^T dF/d gh) per lane."""
        if isinstance(cell, RNNCell):
            D = 1 - new[0] ** 2
            a = D * nu
            return D * (self.s @ cell.weight_hh.T), a, a
        step, n, H = step_function(cell), len(prev), cell.hidden_size
        gi, gh = preactivations(cell, x, prev[0])
        w_hh, b_hh = cell.weight_hh.detach(), cell.bias_hh.detach()
        _, Js = torch.func.jvp(
            lambda s: torch.cat(step(gi, torch.addmm(b_hh, s[:, :H], w_hh.T), split_state(s, n)), 1),
            (torch.cat(prev, 1),), (self.s,))
        with torch.enable_grad():
            gi, gh = gi.requires_grad_(), gh.requires_grad_()
            out = torch.cat(step(gi, gh, prev), 1)
            a_in, a_hid = torch.autograd.grad(out, (gi, gh), grad_outputs=nu)
        return Js, a_in, a_hid

    def credit(self, delta):
        self.grad += torch.einsum("b,bgv->gv", (delta * self.s).sum(1), self.theta)

    def carried(self):
        return [self.s, self.theta]

"""Unbiased Online Recurrent Optimization (Tallec and Ollivier, ICLR 2018).

Per lane, a rank-one estimate s~ theta~^T of the influence matrix d s_t / d theta, reset to zero at the
start of the sequence; each step, with fresh signs nu in {-1, +1}^S, the same nu in both factors:

    rho0 = sqrt(|theta~| / |J s~|),   rho1 = sqrt(|nu^T F| / |nu|)      (variance-reducing rescaling)
    s~     <- rho0 J s~ + rho1 nu
    theta~ <- theta~ / rho0 + nu^T F / rho1
    grad   += (d loss_t / d s_t . s~) theta~

E[s~ theta~^T] = J M + F exactly (the cross terms change sign with nu), so the estimate is unbiased.
J s~ and nu^T F are exact: closed form for the tanh RNN (J s~ = D (W_hh s~), nu^T F = (D nu) (x) v with
D = 1 - h_t^2); for the leaky RNN, LSTM and GRU, J s~ by forward-mode AD (`torch.func.jvp`) and nu^T F from the
per-lane derivatives of nu . s_t by the two pre-activations (one step of autograd). Carried state:
s~ [B, S] and theta~ [B, P]; cost per step O(H P), like one step of BPTT.
"""
import torch

from harness import online
from harness.jacobians import preactivations, split_state, step_function
from harness.models import RNNCell
from harness.online import ONLINE_PARAMS, OnlineMethod, lane_norm


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
        # theta~ = scale * T per lane: the 1/rho0 rescaling then costs [B] numbers, and T is updated in
        # place by one rank-one product (theta~ is the only large factor; this halves its memory passes)
        self.s, self.T = w.new_zeros(B, S), w.new_zeros(B, G, cell.input_size + cell.hidden_size + 2)
        self.scale = w.new_ones(B)

    def advance(self, cell, x, prev, new, rng):
        nu = self.signs(rng, self.s.shape, self.s)
        Js, a_in, a_hid = self.tangents(cell, x, prev, new, nu)
        if a_in is a_hid:   # tanh RNN: nu^T F = a (x) v, v = [x; 1; h; 1]
            v = self.input_vector(x, prev[0])
            nuF_norm = lane_norm(a_in) * lane_norm(v)
        else:
            one = x.new_ones(x.shape[0], 1)
            x1, h1 = torch.cat([x, one], 1), torch.cat([prev[0], one], 1)
            nuF_norm = torch.sqrt((lane_norm(a_in) * lane_norm(x1)) ** 2 + (lane_norm(a_hid) * lane_norm(h1)) ** 2)
        theta_norm = self.scale * lane_norm(self.T)

        rho0 = online.balance(theta_norm, lane_norm(Js), self.eps)
        rho1 = online.balance(nuF_norm, lane_norm(nu), self.eps)
        if self.trace is not None:
            self.trace.append([(lane_norm(rho0[:, None] * Js), theta_norm / rho0),
                               (lane_norm(rho1[:, None] * nu), nuF_norm / rho1)])
        self.s = rho0[:, None] * Js + rho1[:, None] * nu
        self.scale = self.scale / rho0                                  # theta~ / rho0
        c = (1 / (rho1 * self.scale))[:, None, None]                    # + nu^T F / rho1, in units of scale
        if a_in is a_hid:
            self.T.baddbmm_(c * a_in[:, :, None], v[:, None, :])
        else:
            I = x.shape[1]
            self.T[..., :I + 1] += (c * a_in[:, :, None]) * x1[:, None, :]
            self.T[..., I + 1:] += (c * a_hid[:, :, None]) * h1[:, None, :]
        if not ((self.scale > 1e-4) & (self.scale < 1e4)).all():   # keep T in range
            self.T.mul_(self.scale[:, None, None])
            self.scale.fill_(1.0)

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
        self.grad += torch.einsum("b,bgv->gv", (delta * self.s).sum(1) * self.scale, self.T)

    def carried(self):
        return [self.s, self.T, self.scale]

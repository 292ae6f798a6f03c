"""e-prop, symmetric (Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein and Maass, "A solution to the
learning dilemma for recurrent networks of spiking neurons", Nature Communications 2020).

e-prop factorises the gradient into a learning signal and an eligibility trace per synapse,

    dE/dW_ji = sum_t (dE/dz_j^t) e_ji^t ~ sum_t L_j^t e_ji^t,

with the learning signal L_j^t the partial derivative dE/dz_j^t through the readout at t only (the
total one would need the future), and the eligibility trace treating the recurrent input
z^{t-1} = h_{t-1} as an input (no derivative through it), so each unit keeps only its own, local,
past: with hidden state h_j^t (what unit j carries to t + 1 directly) and observable z_j^t,

    eligibility vector   eps_ji^t = (d h_j^t / d h_j^{t-1}) eps_ji^{t-1} + d h_j^t / d W_ji
    eligibility trace    e_ji^t   = (d z_j^t / d h_j^t) eps_ji^t   (+ d z_j^t / d W_ji where W_ji acts on z_j)

Symmetric e-prop takes the readout's own weights as feedback, L^t = W_out^T dE_t/dy^t: the exact
immediate derivative delta_t = d loss_t / d h_t (harness/online.py; for the squared error, Bellec's
sum_k W^out_kj (y_k^t - y*_k^t) up to the loss's normaliser). The readout has no leak (Bellec et al.'s
kappa = 0), so their filtered traces are the plain e^t. Per cell (the rows g = j H + k of W_ih,
b_ih, W_hh, b_hh feed unit j = k; v_t = [x_t; 1; h_{t-1}; 1] is the row's input):
- LSTM (hidden state c, observable h = o tanh(c); below): eps^t = f^t eps^{t-1} + (d c^t / d pre) v_t
  for the i, f, g rows, d c / d pre being g sigma'(i), c^{t-1} sigma'(f), i tanh'(g); e^t = o^t
  tanh'(c^t) eps^t; the o rows have no trace, e^t = sigma'(o^t) tanh(c^t) v_t.
- leaky RNN (h^t = (1 - a) h^{t-1} + a tanh(u^t), z = h): eps^t = e^t = (1 - a) eps^{t-1} + a tanh'(u^t)
  v_t (Murray's RFLO trace; `rflo` is this with random feedback).
- GRU (h^t = (1 - z^t) n^t + z^t h^{t-1}): eps^t = e^t = z^t eps^{t-1} + (d h^t / d pre) v_t.
- tanh RNN: the state reaches the next step only through W_hh h_{t-1}, so eps^t = d h^t / d W: e-prop
  is the one-step (immediate) gradient.
Equivalently: the gradient of autograd through the network with h_{t-1} stop-gradiented where it
enters the gates (gh = W_hh h_{t-1}.detach() + b_hh), the cell's other paths kept
(tests/test_online_family.py). Exact when W_hh = 0 (the dropped path carries nothing; the
conformance suite checks it on every cell). Leaky RNN and GRU run on methods/_unitwise.py (m[h] = eps);
cost per step O(B P), carried state B x P (B x 3P/4 for the LSTM, none for the tanh RNN).
"""
import torch

from harness.jacobians import lstm_parts, preactivations
from harness.method import Regime, zero_recurrent_weights
from harness.models import LSTMCell
from harness.online import ONLINE_PARAMS
from methods._unitwise import UnitwiseInfluence, unit_rows


class EProp(UnitwiseInfluence):
    name = "eprop"
    description = "e-prop (symmetric): eligibility traces through each unit's own state, learning signal the immediate loss derivative"
    paper = ("Bellec, Scherr, Subramoney, Hajek, Salaj, Legenstein and Maass, A solution to the learning dilemma "
             "for recurrent networks of spiking neurons, Nature Communications 2020")
    gradient_kind = "approximate"
    hyperparameters = ONLINE_PARAMS
    exact_regimes = [Regime("W_hh = 0: no recurrent input, so the eligibility traces are the exact influence",
                            prepare=zero_recurrent_weights)]

    def unit_jacobian(self, cell, units, B):
        return units.Ds   # d h_j^t / d h_j^{t-1} through the unit's own state only

    # The LSTM as in the paper: eps on c for the rows of i, f, g only (the o rows never reach c), and
    # e formed from eps^t when a learning signal arrives (the generic per-unit path would carry e too).
    def begin(self, cell, B):
        self.lstm = isinstance(cell, LSTMCell)
        if not self.lstm:
            return super().begin(cell, B)
        H = cell.hidden_size
        self.epsilon = self.zeroed_buffer("epsilon", (3 * H, B, cell.input_size + H + 2), cell.weight_hh)

    def advance(self, cell, x, prev, new, rng):
        if not self.lstm:
            return super().advance(cell, x, prev, new, rng)
        lstm = lstm_parts(*preactivations(cell, x, prev[0]), prev[1])
        v = self.input_vector(x, prev[0])
        # eps^t = f^t eps^{t-1} + (d c^t / d pre) v^t
        self.epsilon.mul_(unit_rows(lstm.f, 3)).addcmul_(lstm.dc_dpre.T.contiguous()[:, :, None], v[None])
        self.step_terms = (lstm, v)

    def credit(self, signal):
        if not self.lstm:
            return super().credit(signal)
        lstm, v = self.step_terms
        H = lstm.f.shape[1]
        L = signal[:, :H]                                   # L^t (the signal on c is zero: the readout reads h)
        # i, f, g rows: e^t = o tanh'(c^t) eps^t; o rows: e^t = sigma'(o) tanh(c^t) v^t
        self.grad[:3 * H] += torch.bmm(unit_rows(L * lstm.dh_dc, 3).view(3 * H, 1, -1), self.epsilon)[:, 0]
        self.grad[3 * H:] += (L * lstm.dh_dpre_o).T @ v

    def carried(self):
        return [self.epsilon] if self.lstm else super().carried()

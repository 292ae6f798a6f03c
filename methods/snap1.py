"""SnAp-1: the Sparse 1-step Approximation of RTRL (Menick, Elsen, Evci, Osindero, Simonyan and Graves,
"Practical Real Time Recurrent Learning with a Sparse Approximation", ICLR 2021).

RTRL carries the influence matrix J_t = d h_t / d theta with the immediate Jacobian I_t = d h_t / d theta_t
and the dynamics Jacobian D_t = d h_t / d h_{t-1}:

    J_t = I_t + D_t J_{t-1},     d L_t / d theta = (d L_t / d h_t) J_t.

SnAp-n keeps only the entries of J_t that are nonzero within n steps, J_t ~ (I_t + D_t J_{t-1}) (.) M_n.
SnAp-1 keeps the pattern of I_t: the influence of each parameter on the unit it feeds directly. A row
g = j H + k (gate j) of W_ih, b_ih, W_hh, b_hh feeds unit k only, so J_t keeps, per lane, one entry
per parameter and state component of unit k. For the LSTM, whose state is (h, c), both h_k and c_k for
every row of unit k: the unit's block, one entry more than I_t's pattern for the o-gate rows (the o
gate does not reach c_k in one step); with it SnAp-1 is exact whenever D_t is block-diagonal per unit.
With J_{t-1} in that pattern the product D_t J_{t-1} needs only unit k's block of D_t (its diagonal; a
2 x 2 block for the LSTM):

    J_t[s_k, theta_g] = sum_r D_t[s_k, r_k] J_{t-1}[r_k, theta_g] + I_t[s_k, theta_g]
    D_t[s_k, h_k] = (direct) + sum_j (d s_t,k / d gh_{jH+k}) W_hh[jH+k, k]     (W_hh's gate-block diagonals)
    D_t[s_k, c_k] = (direct: the LSTM's f_k, and o_k tanh'(c_t,k) f_k for h_k)

with I_t[s_k, theta_g] = (d s_t,k / d gi_g) [x_t; 1] for (W_ih, b_ih) and (d s_t,k / d gh_g) [h_{t-1}; 1]
for (W_hh, b_hh) (methods/_unitwise.py, harness/jacobians.py). Tanh RNN: D_t = diag(1 - h_t^2) W_hh
gives J_t[k, theta_k] = (1 - h_t,k^2) W_hh[k, k] J_{t-1}[k, theta_k] + (1 - h_t,k^2) v_t. Leaky RNN:
D_t[k, k] = (1 - a) + a (1 - tanh(u_t,k)^2) W_hh[k, k]. GRU: the direct term is z_k.

Exact where the kept pattern is closed under the dynamics: when every gate block of W_hh is diagonal,
unit k's state depends only on unit k's past, D_t is block-diagonal per unit and SnAp-1 is RTRL (every
cell; the conformance suite checks it). Cost per step and lane O(S_unit^2 P) (the S_unit x S_unit
block mixes the components), the order of one step of BPTT for S_unit = 1 (measured against it in the
README); carried state the B x S_unit x P influence entries (S_unit = 2 for the LSTM, 1 otherwise),
and for the LSTM a workspace of the same size while a step mixes them (transient, not state bytes).
"""
from harness.method import Regime, diagonal_recurrent_weights
from harness.online import ONLINE_PARAMS
from methods._unitwise import UnitwiseInfluence


class SnAp1(UnitwiseInfluence):
    name = "snap1"
    description = "SnAp-1: RTRL's influence kept only on the unit each parameter feeds, through the diagonal of the state Jacobian"
    paper = ("Menick, Elsen, Evci, Osindero, Simonyan and Graves, Practical Real Time Recurrent Learning with a "
             "Sparse Approximation, ICLR 2021")
    gradient_kind = "approximate"
    hyperparameters = ONLINE_PARAMS
    test_params = [{}, {"update_every": 2}]
    exact_regimes = [Regime("diagonal W_hh (every gate block): the recurrent Jacobian is diagonal per unit, "
                            "SnAp-1 is RTRL", prepare=diagonal_recurrent_weights)]

    def unit_jacobian(self, cell, units, B):
        H = cell.hidden_size
        gates = cell.weight_hh.shape[0] // H
        w_diag = cell.weight_hh.view(gates, H, H).diagonal(dim1=1, dim2=2)          # [gates, H]
        J = [list(row) for row in units.Ds]
        for s, Ch in enumerate(units.Ch):
            through_w = (Ch.view(B, gates, H) * w_diag).sum(1)                      # via W_hh[jH+k, k] h_k
            J[s][0] = through_w if J[s][0] is None else through_w + J[s][0]
        return J

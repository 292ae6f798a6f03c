"""RFLO: random-feedback local online learning (Murray, "Local online learning in recurrent networks with
random feedback", eLife 2019), on the leaky tanh RNN (`--cell leaky`).

Murray's network, h^t = h^{t-1} + (1/tau)(-h^{t-1} + phi(u^t)), u^t = W h^{t-1} + W^in x^t, y^t = W^out h^t,
is the leaky cell with a = 1/tau and phi = tanh (biases here too: v^t = [x^t; 1; h^{t-1}; 1] holds every
input of the row). RFLO drops from RTRL's influence every path through the recurrent weights and keeps
the leak, so the trace of synapse (a, b) is local to its unit,

    p_ab^t = (1 - 1/tau) p_ab^{t-1} + (1/tau) phi'(u_a^t) v_b^t,

and the error reaches the units through a fixed random matrix B [H, out] instead of W^out^T,

    dW_ab ~ sum_t [B e^t]_a p_ab^t,        e^t = d loss_t / d y^t  (Murray's y* - y for the squared error,
                                                                     up to sign and the loss's normaliser);

the readout's own gradient is exact. With `feedback=readout`, B = W^out^T and the signal is the exact
immediate derivative delta_t: RFLO is then e-prop on the leaky RNN (methods/eprop.py, of which this is
a subclass). Its defining identity, checked in tests/test_online_family.py: the gradient equals autograd's
through the network with W_hh h^{t-1} stop-gradiented (the leak path kept) and W^out^T swapped for B
where the loss is pulled back to h^t. Exact (conformance suite) when W_hh = 0 and `feedback=readout`:
the leak is then the only path from h^{t-1} to h^t and B the true feedback.

B is drawn once, uniform in (-1/sqrt(H), 1/sqrt(H)) like the readout's initial weights (so |B| is
|W^out| at initialisation; Murray draws B at random, its scale only sets the step size of the recurrent
weights), in float64 from its own seed `feedback_seed`, the same for every run seed: a sweep's seeds
vary the network and the data against one B; grid over `feedback_seed` to vary B.
Cost per step and lane O(H V); carried state the traces p, H x V per lane.
"""
import math

import torch

from harness.config import Param
from harness.method import Regime, zero_recurrent_weights
from harness.online import ONLINE_PARAMS
from methods.eprop import EProp


class RFLO(EProp):
    name = "rflo"
    description = "random-feedback local online learning: leak-only eligibility traces, error through a fixed random matrix"
    paper = "Murray, Local online learning in recurrent networks with random feedback, eLife 2019"
    gradient_kind = "approximate"
    hyperparameters = {
        **ONLINE_PARAMS,
        "feedback": Param("random", str, "random: a fixed random matrix B (RFLO); readout: B = W_out^T (exact "
                          "learning signal: e-prop on the leaky RNN)", choices=("random", "readout")),
        "feedback_seed": Param(0, int, "seed of the random feedback matrix B", check=lambda v: 0 <= v < 2**64,
                               allowed="an integer in [0, 2**64)"),
    }
    cells = ("leaky",)
    test_params = [{}, {"feedback": "readout", "update_every": 2}]
    exact_regimes = [Regime("W_hh = 0 and feedback=readout: the leak is the only path through time and B is "
                            "W_out^T", params={"feedback": "readout"}, prepare=zero_recurrent_weights)]
    one_step_params = {"feedback": "readout"}   # with random feedback no step's signal is exact
    _B: torch.Tensor | None = None

    def refusal(self, cell):
        return ("RFLO is defined on the leaky tanh RNN, its trace being the leak path; use --cell leaky, or eprop / "
                "snap1 for the other cells")

    def feedback_matrix(self, readout) -> torch.Tensor:
        """B^T [out, H], laid out like W_out: the signal is e^t B^T."""
        w = readout.weight
        if self.feedback == "readout":
            return w.detach()
        if self._B is None or self._B.shape != w.shape:
            g = torch.Generator().manual_seed(self.feedback_seed)
            bound = 1 / math.sqrt(w.shape[1])
            self._B = (torch.rand(w.shape, generator=g, dtype=torch.float64) * 2 - 1) * bound
        return self._B.to(dtype=w.dtype, device=w.device)

    def learning_signal(self, net, delta, d_out):
        return d_out @ self.feedback_matrix(net.readout)

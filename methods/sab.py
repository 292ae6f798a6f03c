"""Sparse Attentive Backtracking (Ke, Goyal, Bilaniuk, Binas, Mozer, Pal, Bengio; NeurIPS 2018,
arXiv 1809.03702; first version arXiv 1711.02326).

For each batch of whole sequences (one parameter update per sequence):
    for t = 1..L:
        if t starts a window of k_trunc steps: cut the local backward path of (h, c)
        h^_t, c_t = cell(x_t, (h_{t-1}, c_{t-1}))
        a_j   = score(h^_t, m_j) for every memory m_j
        w     = weights of the k_top best memories, proportional to how far their scores
                exceed the (k_top+1)-th score, normalised to sum to 1
        h_t   = h^_t + sum_j w_j m_j;  y_t = readout(h_t)
        every k_att steps: append h_t to the memory (not detached)
    backpropagate the sequence loss: locally within each window, and through the attention
    into the chosen memories, from which it continues inside their own windows.

Choices (`variant=paper`, the default), each pinned by tests/test_sab.py:
- scorer (`scorer=`): `mlp` (default; the paper's Figure 1, an MLP over [h^_t; m_j]),
  a_j = v . tanh(W_m m_j + W_q h^_t + b), or `bilinear`, a_j = m_j . (W h^_t + b), this project's
  cheaper scorer (not the paper's); both depend on the current state. `separable` is the release's
  scorer, the default of variant=released.
- memory: starts empty; h_t (after the read-out) is stored after steps k_att, 2 k_att, ...
  Stored states are themselves sums of earlier read-outs (memories hold memories); see "the exact
  gradient" below. `store=provisional` stores h^_t instead: a stabiliser the paper does not name,
  off by default and in the released variant.
- short memory (k_top or fewer entries): every memory is read, with softmax weights over its
  scores (there is no (k_top+1)-th score to subtract); an empty memory reads zero.
- long memory: the top k_top + 1 are chosen without gradient from cached keys; ties are broken by
  torch.topk's order (deterministic on CPU; the compiled CPU read puts the earlier memory first),
  and a memory tied with the threshold gets weight 0, so which tied one is chosen does not change
  the forward value (the threshold's gradient goes to the one chosen).
- normaliser: w = relu(a - a_(k+1)) / max(sum, 1e-12): the weights sum to exactly 1 unless all
  k_top scores tie with the threshold (then nothing is read).
- gradient per read: k_top + 1 memories receive gradient, not k_top. The threshold score a_(k+1)
  is part of the function, so it gets gradient (minus the sum of the others' score gradients), and
  the (k_top+1)-th memory, whose weight is 0, is backtracked through its score. This is the exact
  derivative wherever the choice of memories is locally constant. `threshold_grad=false` treats the
  threshold as a constant instead (k_top memories backtracked; no longer the exact gradient).
- windows: fixed boundaries every k_trunc steps from the start (cuts before steps k_trunc,
  2 k_trunc, ... counting from 0), the same chunks as `tbptt[update=sequence]`; local
  backpropagation from a memory stops at the start of its own window.
- one update per sequence: attention may reach any memory until the end, so a per-window update
  would leave the memories' graphs stale. With k_trunc >= L this is full BPTT through the SAB
  network, the harness's reference gradient for it (`sab_bptt` trains that way).
Consequence to report, not hide: every window's graph stays alive until the sequence ends, so
SAB's saved bytes are not below BPTT's on the same network.

The exact gradient through the SAB network explodes at initialisation (copy T=100, LSTM 128,
seeds 0-2: |g*| 9 to 3e6 with the mlp scorer, 48 to 208 bilinear, against 1.04-1.08 for the LSTM
alone; `benchmarks/sab_gradient_norms.py`). Where it comes from: the sparsifier's weights do not
change when the scores are scaled (relu(a - a_(k+1)) / sum), so their derivative is about 1 / s,
s = sum_j (a_j - a_(k+1)) the spread of the top scores over the threshold, which is small at
initialisation (median 0.03-0.07 with the mlp scorer: the scores themselves are small); a read's
gradient into a memory's score is amplified by about |m| |da/dm| / s. Because memories hold
memories (h_t = h^_t + r_t is stored), reads chain through the stored states with that gain per
hop, and the product grows exponentially along chains of reads; the normaliser's floor is not the
cause (the spread never came near it). With the bilinear scorer, memories also grow in the forward
pass (a = m . q favours large memories, and each stored state adds a read-out: |m| up to 77).
`store=provisional` breaks the chain (a memory reaches earlier memories only through the cell)
and tames it: |g*| 1.4-2.0 for both scorers. A higher normaliser floor (0.1) or
`threshold_grad=false` tame it in some seeds and not others; the release's 1e-7 on the threshold
is far below the spread and changes nothing.

`variant=released`: the behaviour of the authors' release (copy task, PyTorch 0.1.12) as it
evidently meant to compute it: threshold at the k_top-th score plus 1e-7 (so k_top - 1 memories
get weight), normaliser sum + 1e-7; scorer w . tanh([h^; m]) with no hidden layer (the query term
cancels after the threshold, so the weights do not depend on the current state); raw scores as
weights while the memory holds k_top or fewer entries; the zero initial state is the first memory;
cuts before steps t with (t + 1) % k_trunc == 0 (counting from 0); readout on [h; r]. What the
release probably ran differs: it subtracts `delta.repeat(1, T)`, of shape [1, B*T], from scores of
shape [B, T]; PyTorch 0.1.12 had no broadcasting and applied pointwise operations to tensors of
equal size as if flattened, so memory t of row b was thresholded against the k-th score of row
(b T + t) mod B (its row-wise normaliser, `sum(..., 1)` keeping its dimension in 0.1.12, was
right). Not confirmed (0.1.12 cannot run here); this variant does not reproduce that arithmetic,
`variant=released_literal` does (everything else as variant=released; every memory is scored
with gradient, since any number may pass the mixed thresholds; pinned against a direct
simulation of the flattened arithmetic in tests/test_sab.py).

Diagnostics (`diagnostics`, recorded at every evaluation): the exact gradient norm through the
SAB network and, on the same pass, the attention entropy, the memories with nonzero weight per
read, the median spread of the top scores, and the stored states' norms.
"""
import torch

from harness.config import Param, positive_int
from harness.fidelity import flat, reference_gradient
from harness.method import Method, Regime, grads_of
from harness.models import make_cell, run

from ._sab_network import SCORERS, SABNetwork

VARIANTS = ("paper", "released", "released_literal")
SCORERS_NAMES = tuple(SCORERS)


def cuts(L: int, k_trunc: int, variant: str) -> set[int]:
    """Steps (0-indexed) before which the local backward path of (h, c) is cut."""
    if variant.startswith("released"):
        return {t for t in range(L) if (t + 1) % k_trunc == 0}
    return set(range(k_trunc, L, k_trunc))


def sab_forward(net, x, k_trunc: int | None, variant: str):
    """Outputs [L, B, out] and the final carry; k_trunc=None: no cut (full BPTT)."""
    carry, outs = net.init_carry(x.shape[1]), []
    cut = cuts(x.shape[0], k_trunc, variant) if k_trunc else set()
    for t in range(x.shape[0]):
        if t in cut:
            carry = net.truncate(carry)
        out, carry = net.step(x[t], carry)
        outs.append(out)
    return torch.stack(outs), carry


class SAB(Method):
    name = "sab"
    description = "sparse attentive backtracking: truncated local BPTT plus skip gradients through sparse attention"
    paper = "Ke et al., Sparse Attentive Backtracking: Temporal credit assignment through reminding, NeurIPS 2018"
    gradient_kind = "approximate"
    hyperparameters = {
        "k_trunc": positive_int(10, "local truncation length"),
        "k_top": positive_int(5, "memories attended per step"),
        "k_att": positive_int(2, "steps between memory writes"),
        "variant": Param("paper", str, "paper; released (the authors' code as evidently meant); released_literal "
                         "(its threshold as PyTorch 0.1.12 computed it: rows mixed)", choices=VARIANTS),
        "store": Param("attended", str, "attended: store h_t = h^_t + r_t (paper, release); provisional: "
                       "store h^_t (a stabiliser the paper does not name; it tames the exploding exact gradient)",
                       choices=("attended", "provisional")),
        "scorer": Param(None, str, "mlp (the paper's), bilinear (this project's cheaper scorer) or separable "
                        "(the release's); default mlp (paper), separable (released)", choices=SCORERS_NAMES),
        "threshold_grad": Param(True, bool, "true: the threshold score a_(k_top+1) gets gradient, so k_top+1 "
                                "memories are backtracked per read (the exact derivative); false: treat it as a constant"),
    }
    test_params = [{}, {"k_trunc": 2, "k_top": 1, "k_att": 1}, {"k_trunc": 3, "k_top": 2, "k_att": 1, "scorer": "mlp"},
                   {"variant": "released", "k_trunc": 2, "k_top": 2, "k_att": 1},
                   {"variant": "released_literal", "k_trunc": 3, "k_top": 2, "k_att": 1}]
    # the conformance suite's sequences have L = 23 steps
    exact_regimes = [Regime("k_trunc >= L: no cut, full BPTT through the SAB network", {"k_trunc": 30}),
                     Regime("k_trunc >= L, mlp scorer", {"k_trunc": 30, "k_top": 2, "k_att": 1, "scorer": "mlp"}),
                     Regime("k_trunc >= L, released variant", {"k_trunc": 30, "k_top": 2, "k_att": 1,
                                                               "variant": "released"}),
                     Regime("k_trunc >= L, the release's literal arithmetic", {"k_trunc": 30, "k_top": 2, "k_att": 1,
                                                                              "variant": "released_literal"})]

    def validate(self):
        self._state_bytes = 0

    def build_network(self, spec):
        cell = make_cell(spec.cell, spec.input_size, spec.hidden_size, spec.tau)
        scorer = self.scorer or ("separable" if self.variant.startswith("released") else "mlp")
        return SABNetwork(cell, spec.output_size, self.k_top, self.k_att, self.variant, scorer, self.store,
                          self.threshold_grad)

    def reference(self):
        """Shared parameters come from the SAB network trained by full BPTT (sab_bptt)."""
        return "sab_bptt", {k: v for k, v in self.params.items() if k != "k_trunc"}

    def forward(self, net, batch):
        return sab_forward(net, batch.x, self.k_trunc, self.variant)

    def gradient(self, net, batch, rng):
        out, (_, memory) = self.forward(net, batch)
        self._state_bytes = memory.nbytes()
        loss = batch.loss(out)
        return loss.item(), grads_of(loss, net)

    def state_bytes(self):
        """The memory's no-grad copies of its values and keys (the stored tensors themselves are
        held by autograd and counted in saved bytes)."""
        return self._state_bytes

    def diagnostics(self, net, batch):
        """At every evaluation, on the first held-out batch: the exact gradient norm through the SAB
        network (the harness's reference gradient, full BPTT) and, recorded on that same pass, the
        attention entropy (of the nonzero weights of each read and lane, normalised, averaged), the
        memories with nonzero weight per read, the median spread of the top scores over the threshold
        (the weights' derivative is about 1 / spread) and the norms of the stored states (mean, max).
        Costs one forward and backward of that batch (a training step without the update)."""
        with net.tracing() as trace:
            g = reference_gradient(net, batch)
        return {"exact_grad_norm": float(flat(g).norm()), **trace.figures()}


class SABBPTT(SAB):
    name = "sab_bptt"
    description = "the SAB network trained by full BPTT (separates the architecture from sparse backtracking)"
    gradient_kind = "exact"
    hyperparameters = {k: v for k, v in SAB.hyperparameters.items() if k != "k_trunc"}
    test_params = [{}, {"k_top": 1, "k_att": 1}, {"variant": "released", "k_top": 2, "k_att": 1}]
    exact_regimes = []   # exact everywhere (gradient_kind); SAB's regimes name k_trunc

    def validate(self):
        self.k_trunc = None
        super().validate()

    def forward(self, net, batch):
        return run(net, batch.x, net.init_carry(batch.batch_size))

"""The method contract. A method is one module in `methods/` with one `Method` subclass.

It declares its name, a one-line description, its paper, whether its gradient is exact,
deterministic-approximate or stochastic, its hyperparameters (validated before training) and where
its gradient must be exact (`exact_regimes`). It implements `gradient` (its estimate of the
sequence-loss gradient at fixed parameters) and, when it updates more than once per sequence,
`train_step`. Forward-mode (online) methods build on `harness.online.OnlineMethod` instead.

What a method is given (all tensors of the run's dtype and device):

`net`, a `harness.models.Network` (a `RecurrentNetwork` unless the method's `build_network` makes
another): `net.init_carry(B)` is the zero carry of B lanes (a tuple of [B, H] tensors: (h,), or (h, c)
for the LSTM); `net.step(x_t, carry)` runs one time step and returns (y_t [B, out], the next carry);
`net.truncate(carry)` cuts the carry's backward path; `net.hidden(carry)` is h_t [B, H];
`harness.models.run(net, x, carry)` runs whole sequences (outputs [L, B, out], final carry). A
`RecurrentNetwork` also has `net.cell` (parameters `weight_ih` [G, I], `weight_hh` [G, H], `bias_ih`,
`bias_hh` [G] in torch.nn.RNN/LSTM/GRU's layout, G = gates x H; `cell(x_t, state)` is the next state)
and `net.readout` (a `torch.nn.Linear` from h_t to y_t). Gradients are returned as a list aligned with
`net.parameters()`.

`batch`, a `harness.task.Batch` of whole sequences: `batch.x` [L, B, I] inputs (time first),
`batch.y` [L, B] class ids or [L, B, out] regression targets, `batch.mask` [L, B] (1 where a loss term
counts), `batch.num_steps` L and `batch.batch_size` B. `batch.loss(out, start, stop)` takes the outputs
of steps start..stop-1 ([stop - start, B, out]) and returns the sum of their masked per-position
losses (cross-entropy, or the squared error averaged over the output dimensions) divided by the
number of loss terms in the whole batch (every step, every lane), so the losses (and gradients) of any
split of the sequence into windows add up to the sequence's; `batch.loss(out)` is the whole
sequence's loss, the one the reference gradient differentiates.

`rng`, a `torch.Generator` from the run's method stream: a method's only source of randomness.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch

from .config import ConfigError, Param, validate_params
from .models import Network, build_network
from .task import Batch

GRADIENT_KINDS = ("exact", "approximate", "stochastic")


@dataclass(frozen=True)
class RunSpec:
    """What a method may need to know about the run before it starts."""

    cell: str
    input_size: int
    hidden_size: int
    output_size: int
    num_steps: int        # L of a training sequence
    batch_size: int
    dtype: torch.dtype = torch.float32
    tau: float | None = None   # time constant of the cells that have one (the leaky RNN); None: its default


@dataclass(frozen=True)
class Regime:
    """A configuration where a method's gradient must equal the reference gradient (full BPTT through
    the method's own network): the conformance suite checks each one in float64 (relative error
    below 1e-10) on tiny networks. Every deterministic method is also checked on a one-step
    sequence without declaring it (`Method.one_step_params`)."""

    why: str                                   # one line: why the gradient is exact here
    params: dict = field(default_factory=dict)  # the method's hyperparameters in this regime
    cells: tuple[str, ...] | None = None       # None: every cell the method supports
    num_steps: int | None = None               # L of the test sequence; None: the suite's default
    # makes the (tiny, float64) network fit the regime in place, e.g. zero or diagonal W_hh
    prepare: Callable[[Network], None] | None = None


def zero_recurrent_weights(net: Network) -> None:
    """A Regime's `prepare`: W_hh = 0 (every gate block), so the state reaches the next step only
    through the cell's own elementwise paths (the leak, the LSTM's cell state, the GRU's z h)."""
    with torch.no_grad():
        net.cell.weight_hh.zero_()


def diagonal_recurrent_weights(net: Network) -> None:
    """A Regime's `prepare`: every gate block of W_hh diagonal, so unit k's state depends only on
    unit k's previous state: the recurrent Jacobian is diagonal (per unit (h_k, c_k) for the LSTM)."""
    with torch.no_grad():
        w = net.cell.weight_hh
        H = w.shape[1]
        w.view(-1, H, H).mul_(torch.eye(H, dtype=w.dtype, device=w.device))


class Updater:
    """Applies one parameter update: gradient-norm clipping, then the optimizer. Keeps the
    pre-clip norm of every update's gradient (`take_norms`), so a run can report how often
    clipping acted and how large the gradients it trained on were."""

    def __init__(self, net: Network, optimizer: torch.optim.Optimizer, clip: float | None):
        self.params = [p for p in net.parameters()]
        self.optimizer, self.clip = optimizer, clip
        self.updates = 0
        self.norms: list[torch.Tensor] = []

    def apply(self, grads: Sequence[torch.Tensor] | None = None) -> None:
        """Update from `grads` (aligned with the network's parameters) or from `.grad`."""
        if grads is not None:
            for p, g in zip(self.params, grads):
                p.grad = g
        present = [p.grad for p in self.params if p.grad is not None]
        # what clip_grad_norm_ does, in its two halves, so the norm is there with or without clipping;
        # kept as a tensor: reading it here would synchronise a GPU at every update
        norm = torch.nn.utils.get_total_norm(present) if present else torch.zeros(())
        if self.clip:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.clip, norm)
        self.norms.append(norm.detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1

    def take_norms(self) -> torch.Tensor:
        """The pre-clip gradient norms of the updates since the last call (float64, on the CPU)."""
        norms = torch.stack(self.norms).double().cpu() if self.norms else torch.zeros(0, dtype=torch.float64)
        self.norms = []
        return norms


class Method:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    gradient_kind: ClassVar[str] = "exact"
    hyperparameters: ClassVar[dict[str, Param]] = {}
    # credit by lag (harness/credit.py): "autograd" measures it with hooks on the hidden states while
    # `gradient` runs; None where the gradient does not flow back through them by autograd
    credit_by_lag: ClassVar[str | None] = "autograd"
    # hyperparameter sets the conformance suite runs (tests/test_conformance.py), e.g. a short window
    test_params: ClassVar[list[dict]] = [{}]
    # where the gradient must be exact (tbptt with k >= L, snap1 with diagonal W_hh, ...); see Regime
    exact_regimes: ClassVar[list[Regime]] = []
    # hyperparameters under which a one-step sequence (no past to approximate) gives the exact
    # gradient; checked for every non-stochastic method; None: never (say why in the docstring)
    one_step_params: ClassVar[dict | None] = {}

    def __init__(self, **params: Any):
        if self.gradient_kind not in GRADIENT_KINDS:
            raise ConfigError(f"method {self.name}: gradient_kind must be one of {GRADIENT_KINDS}")
        self.params = validate_params(f"method {self.name}", self.hyperparameters, params)
        for key, value in self.params.items():
            setattr(self, key, value)
        self.validate()

    # --- what a method may override ------------------------------------------------------------
    def validate(self) -> None:
        """Check combinations of hyperparameters; raise ConfigError."""

    def check(self, spec: RunSpec) -> None:
        """Check the method against the run (cell, sizes, memory); raise ConfigError."""

    def build_network(self, spec: RunSpec) -> Network:
        return build_network(spec.cell, spec.input_size, spec.hidden_size, spec.output_size, spec.tau)

    def gradient(self, net: Network, batch: Batch, rng: torch.Generator) -> tuple[float, list[torch.Tensor]]:
        """(loss, gradient estimate aligned with net.parameters()) over the whole sequence, at fixed
        parameters, without changing them."""
        raise NotImplementedError

    def train_step(self, net: Network, batch: Batch, updater: Updater, rng: torch.Generator) -> float:
        """Train on one batch of whole sequences; default: one update per sequence."""
        loss, grads = self.gradient(net, batch, rng)
        updater.apply(grads)
        return loss

    def reference(self) -> tuple[str, dict]:
        """(method name, hyperparameters) of the exact method whose training trajectory supplies the
        shared parameters at which every method's gradient fidelity is measured (DESIGN.md): full
        BPTT through this method's own network. Default: bptt; SAB's network: sab_bptt."""
        return "bptt", {}

    def diagnostics(self, net: Network, batch: Batch) -> dict[str, float]:
        """Extra figures recorded at every evaluation (on a held-out batch, no gradient needed unless
        the method computes one), e.g. SAB's attention entropy; plotted when present. Default none."""
        return {}

    def state_bytes(self) -> int:
        """Bytes of carried state outside autograd at its largest during the last step."""
        return 0

    def state_dict(self) -> dict:
        """State the method carries from one training step to the next (e.g. an online method's
        running estimates), saved in training checkpoints; default: none. Tensors and plain values."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned, so a resumed run continues bitwise identically."""

    # --- shared --------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """`name[k=v,...]` with the values that differ from the defaults."""
        changed = {k: v for k, v in self.params.items() if v != self.hyperparameters[k].default}
        return self.name + (f"[{','.join(f'{k}={v}' for k, v in changed.items())}]" if changed else "")


def tensor_bytes(*objs) -> int:
    """Bytes of the tensors in (nested tuples, lists or dicts of) `objs`."""
    total = 0
    for o in objs:
        if isinstance(o, torch.Tensor):
            total += o.numel() * o.element_size()
        elif isinstance(o, (tuple, list)):
            total += tensor_bytes(*o)
        elif isinstance(o, dict):
            total += tensor_bytes(*o.values())
    return total


def grads_of(loss: torch.Tensor, net: Network) -> list[torch.Tensor]:
    """d loss / d parameters, with zeros for parameters the loss does not reach."""
    params = list(net.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

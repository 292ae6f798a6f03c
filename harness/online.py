"""The public base of forward-mode (online) methods: RTRL and its approximations (rtrl, uoro, kf_rtrl,
snap1, eprop, rflo), and yours (README, "Adding an online method").

Such a method carries, per lane of the batch, an estimate of the influence d state_t / d theta of the
cell's parameters on its state, alongside the state, and turns each step's loss into gradient at once:

    for t = 1..L:   state_t = cell(x_t, state_{t-1})                     (no graph: torch.no_grad)
                    advance(cell, x_t, state_{t-1}, state_t, rng)          your recursion
                    if step t has loss terms:
                        delta_t = d loss_t / d state_t          (autograd through the step's loss only)
                        credit(learning_signal(net, delta_t, d loss_t / d y_t))      your credit step
                    every `update_every` steps (training): apply the gradient so far and start a new one

The network runs step by step under `torch.no_grad` (the fused cell kernels, so the states are the
reference's); autograd runs only through the loss of one step, d loss_t / d y_t, and the linear
readout y_t = W_out h_t + b_out gives delta_t = d loss_t / d y_t W_out on h_t (zero on the LSTM's c) and
the readout's own gradient, so the method's memory is its carried estimator state. (The network is a
`RecurrentNetwork`: a cell whose hidden state is the first tensor of its carry, and a linear
readout.) A subclass implements

- `begin(cell, batch_size)`: reset every lane's estimate (once per sequence: each lane is a new sequence);
- `advance(cell, x, prev, new, rng)`: one step of its recursion, from carry `prev` to carry `new` (tuples
  of [B, H] tensors in the cell's `state_names` order: (h,) or, for the LSTM, (h, c)) on input x [B, I];
- `credit(signal)`: add the step's gradient to `self.grad`, given signal [B, S] (S = the state tensors
  concatenated; by default delta_t);
- `carried()`: the tensors it carries from step to step (counted as its state bytes);

and declares `cells` (the cells it supports) and `refusal(cell)` (why it refuses the others: the
one-line error of a run that asks for one). It may override `learning_signal` (RFLO replaces the
readout's transpose by a fixed random matrix).

The cell's gradient `self.grad` is one [G, I+1+H+1] matrix (G = gates x H rows, torch's layout): its
columns are the input vector v_t = [x_t; 1; h_{t-1}; 1] that every weight and bias row multiplies, i.e.
W_ih | b_ih | W_hh | b_hh. The one-step derivatives of the cells are in `harness.jacobians`.
"""
from __future__ import annotations

import torch

from harness.config import ConfigError, positive_int
from harness.method import Method, tensor_bytes
from harness.models import CELLS, detach

ONLINE_PARAMS = {
    "update_every": positive_int(None, "steps between parameter updates (default: once per sequence; "
                                       "1: fully online)", optional=True),
}


def balance(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """rho with |rho * b-factor| = |a-factor / rho|, i.e. rho = sqrt(|a| / |b|); eps guards 0/0 (the
    first step, where both factors are zero) and is the dtype's smallest normal number, so that it
    does not disturb the balance of nonzero factors."""
    return torch.sqrt((a + eps) / (b + eps))


def lane_norm(t: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each lane's slice (first dimension)."""
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())))


class OnlineMethod(Method):
    hyperparameters = ONLINE_PARAMS
    cells: tuple[str, ...] = tuple(CELLS)
    # the network runs without a graph (forward mode), so no gradient reaches the hidden states for
    # the credit-by-lag hooks to read; RTRL's credit is BPTT's anyway
    credit_by_lag = None
    trace: list | None = None   # tests set a list: per step, the norms of each rescaled term's two factors

    def refusal(self, cell: str) -> str:
        """Why this method does not run on `cell` (one line, no full stop): the reason in the error."""
        return "its recursion is not implemented for this cell"

    def check(self, spec):
        if spec.cell not in self.cells:
            raise ConfigError(f"method {self.name}: cell '{spec.cell}' is not supported ({self.refusal(spec.cell)}); "
                              f"supported: {', '.join(self.cells)}")

    # --- the estimator, per subclass -------------------------------------------------------------
    def begin(self, cell, batch_size: int) -> None:
        """Reset the estimate of every lane (the start of its sequence)."""
        raise NotImplementedError

    def advance(self, cell, x, prev, new, rng) -> None:
        """One step of the forward recursion, from carry `prev` to `new` on input `x`."""
        raise NotImplementedError

    def credit(self, signal: torch.Tensor) -> None:
        """self.grad += the step's gradient from signal [B, S] (by default delta_t = d loss_t / d state_t)."""
        raise NotImplementedError

    def carried(self) -> list[torch.Tensor]:
        """The estimator state carried from one step to the next."""
        raise NotImplementedError

    def learning_signal(self, net, delta: torch.Tensor, d_out: torch.Tensor) -> torch.Tensor:
        """The signal credited against the estimate: delta [B, S] = d loss_t / d state_t, the exact
        immediate derivative (d_out [B, out] = d loss_t / d y_t pulled back through the readout).
        Feedback-alignment methods pull d_out back through another matrix."""
        return delta

    # --- shared ------------------------------------------------------------------------------
    def signs(self, rng, shape, like: torch.Tensor) -> torch.Tensor:
        """Independent uniform signs from the run's method stream (tests replace this to enumerate)."""
        return torch.randint(0, 2, shape, generator=rng, dtype=like.dtype).to(like.device).mul_(2).sub_(1)

    def zeroed_buffer(self, slot, shape, like: torch.Tensor) -> torch.Tensor:
        """A zeroed tensor of `like`'s dtype and device, kept from one sequence to the next under the name
        `slot` (a large fresh tensor costs page faults on first touch, every sequence)."""
        cache = self.__dict__.setdefault("_buffers", {})
        t = cache.get(slot)
        if t is None or t.shape != torch.Size(shape) or t.dtype != like.dtype or t.device != like.device:
            t = cache[slot] = like.new_zeros(shape)
        else:
            t.zero_()
        return t

    @staticmethod
    def input_vector(x, h_prev):
        """v_t = [x_t; 1; h_{t-1}; 1], the columns of the cell's gradient."""
        one = x.new_ones(x.shape[0], 1)
        return torch.cat([x, one, h_prev, one], 1)

    def gradient(self, net, batch, rng):
        return self._run(net, batch, rng, None)

    def train_step(self, net, batch, updater, rng):
        return self._run(net, batch, rng, updater)[0]

    def state_bytes(self):
        return self._state_bytes

    def _run(self, net, batch, rng, updater):
        cell, readout, L, B = net.cell, net.readout, batch.num_steps, batch.batch_size
        I, H = cell.input_size, cell.hidden_size
        every = self.update_every or L
        carry = detach(net.init_carry(B))
        self.eps = torch.finfo(batch.x.dtype).tiny
        self.begin(cell, B)
        self._state_bytes = tensor_bytes(self.carried())

        def zero_grads():
            self.grad = cell.weight_hh.new_zeros(cell.weight_hh.shape[0], I + H + 2)
            return [torch.zeros_like(p) for p in readout.parameters()]

        readout_grads, total = zero_grads(), 0.0
        for t in range(L):
            with torch.no_grad():
                new = cell(batch.x[t], carry)
                self.advance(cell, batch.x[t], carry, new, rng)
            carry = new
            if batch.mask[t].any():
                # autograd only through the loss function: y_t = W_out h_t + b_out is linear, so
                # d loss_t / d h_t = d_out W_out and the readout's gradient is d_out^T h_t, sum(d_out)
                h = net.hidden(carry)
                with torch.no_grad():
                    out = readout(h)
                out.requires_grad_()
                loss = batch.loss(out[None], t, t + 1)
                (d_out,) = torch.autograd.grad(loss, out)
                total += loss.item()
                with torch.no_grad():
                    delta = torch.cat([d_out @ readout.weight] + [torch.zeros_like(c) for c in carry[1:]], 1)
                    self.credit(self.learning_signal(net, delta, d_out))
                    readout_grads[0] += d_out.T @ h
                    readout_grads[1] += d_out.sum(0)
            if updater is not None and ((t + 1) % every == 0 or t == L - 1):
                updater.apply(self._grads(net, readout_grads))
                readout_grads = zero_grads()
        return total, (None if updater is not None else self._grads(net, readout_grads))

    def _grads(self, net, readout_grads):
        I, H, g = net.cell.input_size, net.cell.hidden_size, self.grad
        by_name = {"cell.weight_ih": g[:, :I], "cell.bias_ih": g[:, I], "cell.weight_hh": g[:, I + 1:I + 1 + H],
                   "cell.bias_hh": g[:, I + 1 + H], "readout.weight": readout_grads[0],
                   "readout.bias": readout_grads[1]}
        return [by_name[n].contiguous().clone() for n, _ in net.named_parameters()]

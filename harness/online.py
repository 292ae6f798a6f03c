"""What the online methods (rtrl, uoro, kf_rtrl) share: the forward pass that carries an estimate of
d state / d theta alongside the state, per lane, and turns each step's loss into a gradient.

The network is run step by step under `torch.no_grad` (the fused cell kernels, so the states are the
reference's); only the readout's one-step graph is built, to get d loss_t / d state_t and the readout's
own gradient, so autograd holds one step at a time and the method's memory is its carried estimator
state. A subclass keeps that state and implements `begin` (reset every lane at the start of its
sequence), `advance` (one step of its recursion) and `credit` (add delta_t . estimate_t to the cell's
gradient). The cell's gradient is kept as one [G, I+1+H+1] matrix, the columns being the input vector
v_t = [x_t; 1; h_{t-1}; 1] every weight and bias multiplies: W_ih | b_ih | W_hh | b_hh.
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

    def check(self, spec):
        if spec.cell not in self.cells:
            raise ConfigError(f"method {self.name}: cell '{spec.cell}' is not supported (the factorisation "
                              f"does not apply); supported: {', '.join(self.cells)}")

    # --- the estimator, per subclass -------------------------------------------------------------
    def begin(self, cell, batch_size: int) -> None:
        raise NotImplementedError

    def advance(self, cell, x, prev, new, rng) -> None:
        """One step of the forward recursion, from carry `prev` to `new` on input `x`."""
        raise NotImplementedError

    def credit(self, delta: torch.Tensor) -> None:
        """self.grad += the step's gradient from delta = d loss_t / d state_t [B, S]."""
        raise NotImplementedError

    def carried(self) -> list[torch.Tensor]:
        """The estimator state carried from one step to the next."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------
    def signs(self, rng, shape, like: torch.Tensor) -> torch.Tensor:
        """Independent uniform signs from the run's method stream (tests replace this to enumerate)."""
        return torch.randint(0, 2, shape, generator=rng, dtype=like.dtype).to(like.device).mul_(2).sub_(1)

    @staticmethod
    def input_vector(x, h_prev):
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
                leaves = [c.detach().requires_grad_() for c in carry]
                loss = batch.loss(readout(net.hidden(tuple(leaves)))[None], t, t + 1)
                *deltas, gw, gb = torch.autograd.grad(loss, leaves + list(readout.parameters()),
                                                      allow_unused=True)
                total += loss.item()
                delta = torch.cat([torch.zeros_like(c) if d is None else d for c, d in zip(carry, deltas)], 1)
                with torch.no_grad():
                    self.credit(delta)
                readout_grads[0] += gw
                readout_grads[1] += gb
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

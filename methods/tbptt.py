"""Truncated backpropagation through time, TBPTT(k1, k2) (Williams and Peng 1990).

update=window (default): every k1 steps, backpropagate k2 >= k1 steps, injecting only the losses
of the last k1 steps, and update the parameters. For k2 > k1 the overlap is rerun from the
stored detached state at step e - k2 with the current parameters (the graph built before the
last update is stale). The final partial window is kept (on the copy task it holds every target) and reaches back as far
before its start as the others, so with k1 = k2 the windows are the disjoint chunks that
update=sequence detaches, and both give the same gradient at fixed parameters.

update=sequence: one graph over the whole sequence with the hidden state detached every k steps,
one update per sequence (the truncated baseline of the SAB release).

The estimate at fixed parameters is the sum of the window gradients with no update in between.
"""
import torch

from harness.config import ConfigError, Param, positive_int
from harness.method import Method, Regime, grads_of, tensor_bytes
from harness.models import detach, run


class TBPTT(Method):
    name = "tbptt"
    description = "truncated BPTT(k1, k2): update every k1 steps from a gradient reaching k2 steps back"
    paper = ("Williams and Peng, An efficient gradient-based algorithm for on-line training of "
             "recurrent network trajectories, Neural Computation 1990")
    gradient_kind = "approximate"
    hyperparameters = {
        "k": positive_int(10, "truncation length; default for k1 and k2"),
        "k1": positive_int(None, "steps between updates (default k)", optional=True),
        "k2": positive_int(None, "steps the gradient reaches back, >= k1 (default k)", optional=True),
        "update": Param("window", str, "window: update every k1 steps; sequence: once per sequence",
                        choices=("window", "sequence")),
    }

    test_params = [{}, {"k": 2}, {"k1": 2, "k2": 3}, {"k": 3, "update": "sequence"}]
    # the conformance suite's sequences have L = 23 steps
    exact_regimes = [Regime("k >= L: one window is the whole sequence", {"k": 30}),
                     Regime("k >= L, update=sequence: no cut", {"k": 30, "update": "sequence"}),
                     Regime("k2 >= L: every window reaches back to the start", {"k1": 2, "k2": 30})]

    def validate(self):
        self.k1 = self.k1 or self.k
        self.k2 = self.k2 or self.k
        if self.k2 < self.k1:
            raise ConfigError(f"method tbptt: k2={self.k2} must be >= k1={self.k1}")
        if self.update == "sequence" and self.k2 != self.k1:
            raise ConfigError(f"method tbptt: update=sequence detaches every k steps; k2={self.k2} "
                              f"must equal k1={self.k1}")
        self._state_bytes = 0

    def windows(self, L):
        """(start of the rerun, first step whose loss counts, end) of each window."""
        ends = list(range(self.k1, L, self.k1)) + [L]
        return [(max(0, b - (self.k2 - self.k1)), b, e) for b, e in zip([0] + ends, ends)]

    def window_losses(self, net, batch):
        """Yield each window's loss as a graph over its last k2 steps; the caller may update the
        parameters between windows, and the next window reruns from a stored detached carry."""
        windows = self.windows(batch.num_steps)
        stored = {0: net.init_carry(batch.batch_size)}
        for i, (s, b, e) in enumerate(windows):
            carry, outs = stored.pop(s), []
            nxt = windows[i + 1][0] if i + 1 < len(windows) else None
            for t in range(s, e):
                if t == nxt:
                    stored[t] = detach(carry)
                out, carry = net.step(batch.x[t], carry)
                outs.append(out)
            if nxt == e:
                stored[e] = detach(carry)
            self._state_bytes = max(self._state_bytes, tensor_bytes(stored))
            yield batch.loss(torch.stack(outs[b - s:]), b, e)

    def gradient(self, net, batch, rng):
        if self.update == "sequence":
            out, _ = run(net, batch.x, net.init_carry(batch.batch_size), truncate_every=self.k)
            loss = batch.loss(out)
            return loss.item(), grads_of(loss, net)
        total, grads = 0.0, None
        for loss in self.window_losses(net, batch):
            g = grads_of(loss, net)
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            total += loss.item()
        return total, grads

    def train_step(self, net, batch, updater, rng):
        if self.update == "sequence":
            return super().train_step(net, batch, updater, rng)
        total = 0.0
        for loss in self.window_losses(net, batch):
            loss.backward()
            updater.apply()
            total += loss.item()
        return total

    def state_bytes(self):
        return self._state_bytes

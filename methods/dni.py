"""Decoupled neural interfaces with synthetic gradients at the truncation boundaries (Jaderberg,
Czarnecki, Osindero, Vinyals, Graves, Silver and Kavukcuoglu, "Decoupled neural interfaces using
synthetic gradients", ICML 2017, section 2.1: the recurrent case; its experiments in section 3.1).

The sequence is cut into windows of k steps, as TBPTT(k) cuts it, with one update per window. A
small model M (the synthesiser; linear by default) maps the carried state s (the cell's state, e.g.
[h; c] for the LSTM) to a prediction of the gradient of all the loss still to come with respect to s.
For each window [b, e), with N the batch's loss normaliser (DESIGN.md: every loss is divided by it):

    s_b <- the carry at b (detached: the true gradient stops here, as in TBPTT)
    run steps b..e-1 from s_b; L_w = the window's loss
    delta^_e = scale M(s_e) / N, a constant            (no synthetic gradient after the last step)
    backpropagate L_w + <delta^_e, s_e>: the network's window gradient with the synthetic gradient
        injected at the boundary, and N d/ds_b of it, the bootstrapped target y_b for M at s_b
    M's loss |M(s_b) - y_b|^2 / N (summed over the batch and state units), for b > 0
    update the network and M together (one clip, one optimizer step)

Three choices the paper's algorithm leaves to the implementation, each needed for M to learn here:
- `scale` (0.1): the synthetic gradient is multiplied by it before injection, and the target y_b
  sees the scaled one, so M learns the future gradient discounted by `scale` per window, a
  regression with a contracting fixed point. Measured on copy T=200 (LSTM 64, batch 32, Adam 1e-3,
  one seed, 60 steps): undiscounted (scale=1), M's output grew without bound before the 1/S below,
  and with it the estimate's relative error to the exact gradient was 2 to 10, against 0.05 to 0.13
  with scale=0.1. 0.1 is the factor public reimplementations give for the paper's recurrent
  experiments; scale=0 is tbptt[k] (M is trained but never used) without clipping: M's gradient
  shares the network's clip norm, so a clip that acts scales the network's step differently.
- M works per lane and per unit of loss: it predicts N times the gradient, the gradient of the sum of
  its lane's future per-position losses, of order one whatever the batch size and L. Regressed on
  the normalised gradient (targets of order 1/N), Adam's steps, of order lr whatever the gradient's
  scale, overshoot them by orders of magnitude. The 1/N on M's loss keeps its share of the one
  gradient-norm clip small beside the network's.
- M(s) = m(s) / S, m the synthesiser module and S the state's width. Adam moves every weight of m
  by about lr per update whatever its gradient, so a dense map's output moves by about lr |s|_1 per
  update; the 1/S brings that to lr times the mean |s_j|, below the targets' scale. Without it (and
  scale=0.1) M's output, mostly the noise of its own updates, stayed some 30 times larger than its
  targets and the estimate's relative error grew past 10 within 40 steps on the same run; with it
  the error stayed near 0.05.

M starts at zero (weights and bias), so `dni` starts as `tbptt[k]` and departs from it as M learns;
with M's output held at zero it is `tbptt[k]` (tested: gradients and training trajectory).
`synthesiser=mlp` uses one hidden ReLU layer of the state's width, its output layer starting at zero.

M is part of the method's network (`synthesiser.*` parameters, counted in n_params, saved with the
model, excluded from the recurrent group of the fidelity figures). The sequence loss does not depend
on M, so the exact gradient with respect to M's parameters is zero, and so is what `gradient`
returns for them; M's own training signal, a regression toward bootstrapped targets rather than a
gradient of the sequence loss, is applied only in `train_step`.

The estimate at fixed parameters (`gradient`) is the sum of the window gradients with the synthetic
gradient injected at each boundary and no update in between (DESIGN.md's definition for truncated
methods). Credit by lag is not defined for it: the synthetic gradient injected at a boundary
predicts the whole future loss, not one loss term's.
"""
import torch
from torch import nn

from harness.config import Param, positive_int
from harness.method import Method, Regime, tensor_bytes
from harness.models import RecurrentNetwork, detach, run


class DNINetwork(RecurrentNetwork):
    """The recurrent network plus the synthesiser M: carried state -> predicted d(future loss)/d state."""

    def __init__(self, base: RecurrentNetwork, synthesiser: nn.Module):
        nn.Module.__init__(self)   # the cell and readout are base's, already drawn
        self.cell, self.readout, self.synthesiser = base.cell, base.readout, synthesiser

    def predict(self, s):
        """M(s) = synthesiser(s) / S for the state vector s [B, S] (see the module docstring on the 1/S)."""
        return self.synthesiser(s) / s.shape[-1]

    def synthetic_gradient(self, carry):
        """M's prediction at `carry`, split like the carry (one tensor per state part)."""
        delta = self.predict(torch.cat(carry, dim=-1))
        return delta.split([c.shape[-1] for c in carry], dim=-1)

    def recurrent_parameter_names(self):
        return [n for n in super().recurrent_parameter_names() if not n.startswith("synthesiser.")]


def make_synthesiser(kind: str, size: int) -> nn.Module:
    """M, its output layer at zero (built without drawing random numbers); `mlp`'s hidden layer has
    nn.Linear's initialisation."""
    out = nn.utils.skip_init(nn.Linear, size, size)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return out if kind == "linear" else nn.Sequential(nn.Linear(size, size), nn.ReLU(), out)


class DNI(Method):
    name = "dni"
    description = "truncated BPTT with a learnt synthetic gradient injected at each window boundary"
    paper = ("Jaderberg et al., Decoupled neural interfaces using synthetic gradients, ICML 2017")
    gradient_kind = "approximate"
    hyperparameters = {
        "k": positive_int(10, "window length: steps between boundaries and updates"),
        "synthesiser": Param("linear", str, "the model of the synthetic gradient", choices=("linear", "mlp")),
        "scale": Param(0.1, float, "factor on the injected synthetic gradient (and on its bootstrap)",
                       check=lambda v: v >= 0, allowed="a number >= 0"),
    }
    credit_by_lag = None   # the injected gradient stands for the whole future loss (module docstring)
    test_params = [{}, {"k": 2}, {"k": 3, "synthesiser": "mlp", "scale": 1.0}]
    # the conformance suite's sequences have L = 23 steps
    exact_regimes = [Regime("k >= L: one window, no boundary to synthesise", {"k": 30})]

    def validate(self):
        self._state_bytes = 0

    def build_network(self, spec):
        # the plain network first, so that the cell and readout start from the weights every other
        # method draws with the same seed
        base = super().build_network(spec)
        return DNINetwork(base, make_synthesiser(self.synthesiser, len(base.cell.state_names) * spec.hidden_size))

    def windows(self, L):
        return [(b, min(b + self.k, L)) for b in range(0, L, self.k)]

    def window(self, net, batch, carry, b, e):
        """Run window [b, e) from `carry`: (L_w, L_w + <delta^_e, s_e>, s_e)."""
        outs, end = run(net, batch.x, carry, b, e)
        loss = batch.loss(outs, b, e)
        objective = loss
        if e < batch.num_steps:
            with torch.no_grad():
                delta = [self.scale * d / batch.normaliser for d in net.synthetic_gradient(end)]
            objective = loss + sum((d * s).sum() for d, s in zip(delta, end))
        return loss, objective, end

    def gradient(self, net, batch, rng):
        params = list(net.parameters())
        mine = {id(p) for p in net.synthesiser.parameters()}
        network = [p for p in params if id(p) not in mine]
        carry, total, grads = net.init_carry(batch.batch_size), 0.0, None
        for b, e in self.windows(batch.num_steps):
            loss, objective, end = self.window(net, batch, carry, b, e)
            g = torch.autograd.grad(objective, network, allow_unused=True)
            g = [torch.zeros_like(p) if x is None else x for p, x in zip(network, g)]
            grads = g if grads is None else [a + x for a, x in zip(grads, g)]
            total += loss.item()
            carry = detach(end)
        by_id = {id(p): x for p, x in zip(network, grads)}
        return total, [by_id[id(p)] if id(p) in by_id else torch.zeros_like(p) for p in params]

    def train_step(self, net, batch, updater, rng):
        params = list(net.parameters())
        synth = list(net.synthesiser.parameters())
        mine = {id(p) for p in synth}
        network = [p for p in params if id(p) not in mine]
        carry, total = net.init_carry(batch.batch_size), 0.0
        for b, e in self.windows(batch.num_steps):
            start = tuple(c.detach().requires_grad_() for c in carry) if b > 0 else carry
            loss, objective, end = self.window(net, batch, start, b, e)
            wrt = network + list(start) if b > 0 else network
            g = torch.autograd.grad(objective, wrt, allow_unused=True)
            grads = {id(p): x for p, x in zip(network, g)}
            if b > 0 and synth:
                # M's regression toward the bootstrapped target y_b = N d(L_w + <delta^_e, s_e>)/d s_b
                target = torch.cat(g[len(network):], dim=-1) * batch.normaliser
                prediction = net.predict(torch.cat(detach(start), dim=-1))
                m_loss = (prediction - target).pow(2).sum() / batch.normaliser
                grads.update(zip(map(id, synth), torch.autograd.grad(m_loss, synth)))
            updater.apply([grads.get(id(p)) for p in params])
            total += loss.item()
            carry = detach(end)
            self._state_bytes = max(self._state_bytes, tensor_bytes(carry))
        return total

    def state_bytes(self):
        return self._state_bytes

"""Recurrent cells with `torch.nn.RNN/LSTM/GRU`'s parameter names and layout, a linear readout, and
the `Network` interface every method and measurement runs through.

Cells use torch's fused single-step kernels (`torch.lstm_cell`, `torch.gru_cell`,
`torch.rnn_tanh_cell`): the same computation for every method, with backward and forward-mode
derivatives, about 1.5x faster per step on CPU than the same formula in separate operations;
the formula each one computes is in its docstring. The leaky tanh RNN (the model of RFLO and e-prop)
has the tanh RNN's parameters and a time constant tau.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .config import ConfigError

Carry = Any  # whatever a network carries from one step to the next (a tuple of tensors for cells)


class Cell(nn.Module):
    """One layer of a recurrent cell; `gates` is 1 (tanh RNN, leaky RNN), 4 (LSTM) or 3 (GRU)."""

    gates = 1
    state_names: tuple[str, ...] = ("h",)
    default_tau: float | None = None   # cells with a time constant (`--tau`) set its default

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        g = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(g))
        self.bias_hh = nn.Parameter(torch.empty(g))
        bound = 1.0 / math.sqrt(hidden_size)  # torch.nn.RNN's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def init_state(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        z = self.weight_hh.new_zeros(batch_size, self.hidden_size)
        return tuple(z for _ in self.state_names)

    @staticmethod
    def hidden(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return state[0]


class RNNCell(Cell):
    """h' = tanh(W_ih x + b_ih + W_hh h + b_hh)."""

    def forward(self, x, state):
        return (torch.rnn_tanh_cell(x, state[0], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh),)


class LSTMCell(Cell):
    """torch.nn.LSTM's gate order: (i, f, g, o) = split(W_ih x + b_ih + W_hh h + b_hh),
    c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c'); state (h, c)."""

    gates = 4
    state_names = ("h", "c")

    def forward(self, x, state):
        return tuple(torch.lstm_cell(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh))


class GRUCell(Cell):
    """torch.nn.GRU's gate order (r, z, n): r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z}),
    n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h."""

    gates = 3

    def forward(self, x, state):
        return (torch.gru_cell(x, state[0], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh),)


class LeakyRNNCell(Cell):
    """Leaky tanh RNN with time constant tau (leak a = 1 / tau):
    h' = (1 - a) h + a tanh(W_ih x + b_ih + W_hh h + b_hh); torch.nn.RNN's (tanh) parameters and
    layout; tau = 1 is the tanh RNN."""

    default_tau = 10.0

    def __init__(self, input_size: int, hidden_size: int, tau: float | None = None):
        super().__init__(input_size, hidden_size)
        self.tau = self.default_tau if tau is None else float(tau)
        check_tau(self.tau)
        self.alpha = 1.0 / self.tau

    def forward(self, x, state):
        h = state[0]
        return (torch.lerp(h, torch.rnn_tanh_cell(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh),
                           self.alpha),)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, tau={self.tau:g}"


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell, "leaky": LeakyRNNCell}


def check_tau(tau) -> None:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 1):
        raise ConfigError(f"--tau {tau!r} must be a number >= 1 (the leak 1/tau lies in (0, 1]; tau = 1 is the "
                          f"tanh RNN)")


def make_cell(kind: str, input_size: int, hidden_size: int, tau: float | None = None) -> Cell:
    """A cell of `kind`; `tau` is the time constant of the cells that have one (None: their default)."""
    if kind not in CELLS:
        from .config import unknown
        raise unknown("cell", kind, list(CELLS))
    cls = CELLS[kind]
    if cls.default_tau is None:
        if tau is not None:
            raise ConfigError(f"--tau applies to cells with a time constant "
                              f"({', '.join(k for k, c in CELLS.items() if c.default_tau is not None)}), "
                              f"not to --cell {kind}")
        return cls(input_size, hidden_size)
    return cls(input_size, hidden_size, tau=tau)


class Network(nn.Module):
    """What the harness runs: `init_carry`, `step`, `truncate` and `hidden`.

    A method that adds parts to the model (SAB's attention) subclasses this; the reference
    gradient, the meters and the evaluation only use these four calls.
    """

    def init_carry(self, batch_size: int) -> Carry:
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, carry: Carry) -> tuple[torch.Tensor, Carry]:
        """One time step: (output_t [B, out], next carry)."""
        raise NotImplementedError

    def truncate(self, carry: Carry) -> Carry:
        """The carry with the local backward path cut (what truncated BPTT detaches)."""
        return detach(carry)

    def hidden(self, carry: Carry) -> torch.Tensor:
        """The hidden state h_t [B, H] inside the carry (for credit-by-lag measurements)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, carry: Carry = None) -> tuple[torch.Tensor, Carry]:
        """The whole sequence x [L, B, in] -> (outputs [L, B, out], final carry)."""
        return run(self, x, self.init_carry(x.shape[1]) if carry is None else carry)

    def recurrent_parameter_names(self) -> list[str]:
        """Parameters that act through the recurrence (everything but the readout)."""
        return [n for n, _ in self.named_parameters() if not n.startswith("readout.")]


class RecurrentNetwork(Network):
    """A recurrent cell followed by a linear readout of its hidden state."""

    def __init__(self, cell: Cell, output_size: int):
        super().__init__()
        self.cell = cell
        self.readout = nn.Linear(cell.hidden_size, output_size)

    def init_carry(self, batch_size):
        return self.cell.init_state(batch_size)

    def step(self, x_t, carry):
        carry = self.cell(x_t, carry)
        return self.readout(self.cell.hidden(carry)), carry

    def hidden(self, carry):
        return self.cell.hidden(carry)


def detach(carry: Carry) -> Carry:
    if isinstance(carry, torch.Tensor):
        return carry.detach()
    if isinstance(carry, (tuple, list)):
        return type(carry)(detach(c) for c in carry)
    if isinstance(carry, dict):
        return {k: detach(v) for k, v in carry.items()}
    return carry


def run(net: Network, x: torch.Tensor, carry: Carry, start: int = 0, stop: int | None = None,
        truncate_every: int | None = None) -> tuple[torch.Tensor, Carry]:
    """Run steps start..stop-1 from `carry`; with `truncate_every=k`, cut the local backward path
    every k steps counted from `start` (one graph, as the SAB release's truncated baseline).
    Returns the stacked outputs [stop-start, B, out] and the final carry."""
    stop = x.shape[0] if stop is None else stop
    outs = []
    for t in range(start, stop):
        if truncate_every and t > start and (t - start) % truncate_every == 0:
            carry = net.truncate(carry)
        out, carry = net.step(x[t], carry)
        outs.append(out)
    return torch.stack(outs), carry


def build_network(cell: str, input_size: int, hidden_size: int, output_size: int,
                  tau: float | None = None) -> RecurrentNetwork:
    if hidden_size <= 0:
        raise ConfigError(f"hidden size {hidden_size} must be a positive integer")
    return RecurrentNetwork(make_cell(cell, input_size, hidden_size, tau), output_size)

"""Mimic a teacher: fit the outputs of a fixed random recurrent network driven by noise, as in the
online-learning literature (e.g. Marschall, Cho and Savin 2020, who train students to reproduce a
target RNN); the teacher's time constant sets how far back its outputs depend on the input.

Teacher (fixed by `teacher_seed`, the same for every run seed; no biases): a leaky tanh network of
`teacher_hidden` units, h_t = (1 - 1/tau) h_{t-1} + (1/tau) tanh(W h_{t-1} + U x_t), h_{-1} = 0,
outputs V h_t; W has i.i.d. N(0, gain^2 / n) entries (spectral radius about `gain`), U and V
i.i.d. N(0, 1/fan-in). Linearised, its slowest mode forgets with a time constant of about
tau / (1 - gain) steps (20 at the defaults tau=10, gain=0.5).

Layout, L = w + T steps: inputs x_t ~ N(0, I) (`inputs` channels) at every step, the teacher's
`outputs` outputs the targets at every step. Teacher and student start from rest; the loss and
the score count only on the last T steps, after a washout of w steps (`washout`, default 3 tau,
rounded up) in which the teacher forgets its resting start, so that the scored targets are
stationary whatever T is (training and test horizons may differ). The targets are divided, per
output, by the teacher's stationary standard deviation (estimated once from 1024 sequences of a
fixed generator, on the 200 steps after the washout; their mean is 0 by symmetry, no biases), so
the score is the normalised MSE ("nmse") and predicting the mean (0) scores 1.0, the chance level
(within a few per cent when w is short of the teacher's memory).
"""
import math

import torch

from harness.config import Param, positive_int
from harness.task import Task

N_STATS, STATS_STEPS = 1024, 200


class Mimic(Task):
    name = "mimic"
    description = "reproduce the outputs of a fixed random leaky RNN driven by Gaussian noise"
    reference = "Marschall, Cho and Savin 2020 (teacher-student task of online RNN learning)"
    loss_kind = "mse"
    score_kind = "nmse"
    default_seq_len = 30   # after the default washout of 30 steps: L = 60
    hyperparameters = {
        "tau": Param(10.0, float, "teacher's leak time constant in steps", check=lambda v: v >= 1,
                     allowed="a number >= 1"),
        "gain": Param(0.5, float, "spectral radius of the teacher's recurrent weights", check=lambda v: v >= 0,
                      allowed="a number >= 0"),
        "teacher_hidden": positive_int(32, "teacher's units"),
        "inputs": positive_int(4, "noise input channels"),
        "outputs": positive_int(2, "teacher outputs to fit"),
        "teacher_seed": Param(0, int, "seed of the teacher's weights"),
        "washout": Param(None, int, "unscored steps at the start (default: 3 tau, rounded up)",
                         check=lambda v: v >= 0, allowed="a non-negative integer", optional=True),
    }

    @property
    def num_steps(self):
        return self.n_washout + self.seq_len

    @property
    def input_size(self):
        return self.inputs

    @property
    def output_size(self):
        return self.outputs

    @property
    def lag(self):
        # no fixed lag: the teacher's memory fades with a time constant of about tau / (1 - gain) steps
        return None

    @property
    def chance(self):
        return 1.0

    @classmethod
    def example(cls, workdir):
        return cls(4, tau=2.0, teacher_hidden=4, inputs=2, outputs=2, washout=2)

    def check(self):
        self.n_washout = math.ceil(3 * self.tau) if self.washout is None else self.washout
        gen = torch.Generator().manual_seed(self.teacher_seed)
        n = self.teacher_hidden
        self.W = torch.randn(n, n, generator=gen) * self.gain / n ** 0.5
        self.U = torch.randn(n, self.inputs, generator=gen) / self.inputs ** 0.5
        self.V = torch.randn(self.outputs, n, generator=gen) / n ** 0.5
        self.scale = torch.ones(self.outputs)
        x = torch.randn(self.n_washout + STATS_STEPS, N_STATS, self.inputs, generator=gen)
        self.scale = self.teacher(x)[self.n_washout:].pow(2).mean((0, 1)).sqrt().clamp_min(1e-12)

    def teacher(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised teacher outputs [L, B, outputs] for inputs [L, B, inputs]."""
        alpha = 1.0 / self.tau
        h = torch.zeros(x.shape[1], self.teacher_hidden)
        drive = x @ self.U.T
        outs = []
        for t in range(x.shape[0]):
            h = (1 - alpha) * h + alpha * torch.tanh(h @ self.W.T + drive[t])
            outs.append(h @ self.V.T)
        return torch.stack(outs) / self.scale

    def generate(self, batch_size, gen):
        L, B = self.num_steps, batch_size
        x = torch.randn(L, B, self.inputs, generator=gen)
        mask = torch.zeros(L, B)
        mask[self.n_washout:] = 1.0
        return self.batch(L, B, x, self.teacher(x), mask)

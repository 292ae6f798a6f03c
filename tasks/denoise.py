"""Denoising copy, or selective copying (Jing et al. 2019, "Gated orthogonal recurrent units";
the "selective copying" task of Gu and Dao 2023): unlike `copy`, the symbols sit at random
positions that differ between sequences, so the network must both keep them and skip the blanks.

Layout, L = T + 1 + n steps: n symbols drawn uniformly from {1..K} (K = `symbols`, default 8) at n
distinct random positions among the first T steps, blanks (0) everywhere else; a marker (K + 1)
at step T; then n blank steps during which the targets are the n symbols in their order of
appearance. Inputs are one-hot over the K + 2 ids. The loss counts on those n recall positions
(`loss_on=targets`, default) or everywhere with blank targets elsewhere (`loss_on=all`, as the
SAB release's copy task); the score is the accuracy on the n recall positions; guessing gives 1/K.
The first symbol may sit at step 0, so the longest dependency spans T + n steps.
"""
import torch
import torch.nn.functional as F

from harness.config import ConfigError, Param, positive_int
from harness.task import Task


class Denoise(Task):
    name = "denoise"
    description = "recall, in order, n symbols scattered at random among T blanks, after a marker"
    reference = "Jing et al. 2019 (denoise task); Gu and Dao 2023 (selective copying)"
    loss_kind = "cross_entropy"
    default_seq_len = 20   # recall lags of up to 25 steps: beyond tbptt's default k=10
    solved_threshold = 0.99   # accuracy on the n recalled symbols
    hyperparameters = {
        "n": positive_int(5, "number of symbols to recall"),
        "symbols": Param(8, int, "alphabet size K", check=lambda v: v >= 2, allowed="an integer >= 2"),
        "loss_on": Param("targets", str, "positions where the loss counts", choices=("targets", "all")),
    }

    @property
    def input_size(self):
        return self.symbols + 2

    @property
    def output_size(self):
        return self.symbols + 1

    @property
    def num_steps(self):
        return self.seq_len + 1 + self.n

    @property
    def lag(self):
        # the j-th symbol (0-based, at step p_j >= j) is recalled at step T + 1 + j: the lag
        # T + 1 + j - p_j is longest, T + 1, when the symbols fill the first steps
        return self.seq_len + 1

    @property
    def chance(self):
        return 1.0 / self.symbols

    def check(self):
        if self.n > self.seq_len:
            raise ConfigError(f"denoise: n={self.n} symbols do not fit in T={self.seq_len} steps (needs n <= T)")

    @classmethod
    def example(cls, workdir):
        return cls(5, n=2, symbols=3)

    def generate(self, batch_size, gen):
        T, n, B, L = self.seq_len, self.n, batch_size, self.num_steps
        symbols = torch.randint(1, self.symbols + 1, (n, B), generator=gen)
        # n distinct positions per sequence: the n smallest of T random keys, in increasing order
        positions = torch.rand(T, B, generator=gen).argsort(0)[:n].sort(0).values
        ids = torch.zeros(L, B, dtype=torch.long)
        ids.scatter_(0, positions, symbols)
        ids[T] = self.symbols + 1
        y = torch.zeros(L, B, dtype=torch.long)
        y[T + 1:] = symbols
        targets = torch.zeros(L, B)
        targets[T + 1:] = 1.0
        mask = targets if self.loss_on == "targets" else torch.ones(L, B)
        return self.batch(L, B, F.one_hot(ids, self.symbols + 2).float(), y, mask, targets)

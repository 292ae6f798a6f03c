"""Temporal order (Hochreiter and Schmidhuber 1997, experiment 6a): two relevant symbols, each X or
Y, appear at random times in a stream of distractors; the class of the sequence is their order,
XX, XY, YX or YY (4 classes).

Layout, L = T steps, one-hot over 8 ids: a start symbol E at step 0, an end symbol B at step
T - 1, distractors drawn uniformly from {a, b, c, d} elsewhere, except the first relevant symbol
at a step t1 drawn uniformly in [T/10, 2T/10] and the second at t2 in [5T/10, 6T/10] (the paper:
T in 100..110, t1 in 10..20, t2 in 50..60; here T is fixed, the bounds scale with it, and round
down, never below step 1 and never after step T - 2). The target is the class at the last step,
where the loss and the score (accuracy) count; chance 1/4. The dependency spans T - t1 steps.
"""
import torch
import torch.nn.functional as F

from harness.config import ConfigError
from harness.task import Task

A, X, Y, START, END = 0, 4, 5, 6, 7   # distractors a..d are ids 0..3


class TemporalOrder(Task):
    name = "temporal_order"
    description = "classify the order (XX, XY, YX, YY) of two symbols at random times among T distractors"
    reference = "Hochreiter and Schmidhuber 1997 (experiment 6a)"
    loss_kind = "cross_entropy"
    default_seq_len = 30   # the first symbol lies 24..27 steps before the answer: beyond tbptt's k=10
    solved_threshold = 0.99   # accuracy of the order class
    input_size = 8
    output_size = 4

    @property
    def chance(self):
        return 0.25

    @property
    def lag(self):
        # the first relevant symbol, at step t1 >= its window's start, is answered at step T - 1
        return self.seq_len - 1 - self.windows()[0][0]

    def windows(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Inclusive ranges of t1 and t2."""
        T = self.seq_len
        lo1 = max(1, T // 10)
        hi1 = max(lo1, 2 * T // 10)
        lo2 = max(hi1 + 1, 5 * T // 10)
        hi2 = max(lo2, 6 * T // 10)
        return (lo1, hi1), (lo2, min(hi2, T - 2))

    def check(self):
        if self.seq_len < 4:
            raise ConfigError(f"temporal_order: sequence length {self.seq_len} must be at least 4")

    def generate(self, batch_size, gen):
        T, B = self.seq_len, batch_size
        (lo1, hi1), (lo2, hi2) = self.windows()
        ids = torch.randint(A, A + 4, (T, B), generator=gen)
        ids[0], ids[-1] = START, END
        t1 = torch.randint(lo1, hi1 + 1, (B,), generator=gen)
        t2 = torch.randint(lo2, hi2 + 1, (B,), generator=gen)
        first, second = torch.randint(0, 2, (2, B), generator=gen)   # 0 -> X, 1 -> Y
        lanes = torch.arange(B)
        ids[t1, lanes] = X + first
        ids[t2, lanes] = X + second
        y = torch.zeros(T, B, dtype=torch.long)
        y[-1] = 2 * first + second
        mask = torch.zeros(T, B)
        mask[-1] = 1.0
        return self.batch(T, B, F.one_hot(ids, 8).float(), y, mask)

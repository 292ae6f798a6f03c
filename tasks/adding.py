"""Adding problem (Hochreiter and Schmidhuber 1997, in the form of Le, Jaitly and Hinton 2015).

Each of the T steps carries two channels: a value drawn uniformly from [0, 1] and a marker. One
marked position lies in the first half of the sequence, one in the second; the target at the
last step is the sum of the two marked values, and the loss and score (MSE) count only there.
Predicting the mean (1) scores Var(u1 + u2) = 1/6, the chance level.
"""
import torch

from harness.config import ConfigError

from harness.task import Task


class Adding(Task):
    name = "adding"
    description = "output the sum of the two marked values of T uniform numbers at the last step"
    reference = "Hochreiter and Schmidhuber 1997; Le, Jaitly and Hinton 2015"
    loss_kind = "mse"
    solved_threshold = 0.01   # MSE, 6% of chance (1/6)
    default_seq_len = 40
    input_size = 2
    output_size = 1

    @property
    def chance(self):
        return 1.0 / 6.0

    def check(self):
        if self.seq_len < 2:
            raise ConfigError(f"adding: sequence length {self.seq_len} must be at least 2")

    def generate(self, batch_size, gen):
        T, B = self.seq_len, batch_size
        values = torch.rand(T, B, generator=gen)
        half = T // 2
        first = torch.randint(0, half, (B,), generator=gen)
        second = torch.randint(half, T, (B,), generator=gen)
        markers = torch.zeros(T, B)
        lanes = torch.arange(B)
        markers[first, lanes] = 1.0
        markers[second, lanes] = 1.0
        x = torch.stack([values, markers], -1)
        y = torch.zeros(T, B, 1)
        y[-1, :, 0] = values[first, lanes] + values[second, lanes]
        mask = torch.zeros(T, B)
        mask[-1] = 1.0
        return self.batch(T, B, x, y, mask)

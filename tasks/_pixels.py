"""Shared layout of the pixel-by-pixel image classification tasks (sequential and permuted digits
and MNIST; Le, Jaitly and Hinton 2015).

An image of P pixels (grey levels scaled to [0, 1]) is fed one pixel per step, in raster order or
in a fixed random order (`perm_seed`, the same for every run seed), each pixel repeated r times:
L = T = r * P steps, one input channel. The class (10) is the target at the last step only, where
the loss and the score (accuracy) count; chance is 1/10 (guessing).

The horizon T (`--seq-len`) must be a multiple of P; r = T / P is the stretch. `stretch=r` may
be given as well, and must then agree with T.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from harness.config import ConfigError, Param, positive_int
from harness.task import Batch, Task

from ._dataset import held_out, shuffled_indices

N_CLASSES = 10

COMMON = {"stretch": positive_int(None, "repeat each pixel r times (must equal T / pixels)", optional=True)}
PERMUTED = {**COMMON, "perm_seed": Param(0, int, "seed of the fixed pixel permutation")}


class PixelSequence(Task):
    loss_kind = "cross_entropy"
    input_size = 1
    output_size = N_CLASSES
    permuted: ClassVar[bool] = False

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train images [N, P] in [0, 1], train labels [N], test images, test labels); ConfigError if unreadable."""
        raise NotImplementedError

    def check(self):
        self.train_x, self.train_y, self.test_x, self.test_y = self.load()
        P = self.pixels = self.train_x.shape[1]
        if self.seq_len % P:
            raise ConfigError(f"{self.name}: sequence length {self.seq_len} must be a multiple of the {P} pixels "
                              f"of an image (each pixel is repeated T / {P} times)")
        self.repeat = self.seq_len // P
        if self.stretch is not None and self.stretch != self.repeat:
            raise ConfigError(f"{self.name}: stretch={self.stretch} needs --seq-len {self.stretch * P} "
                              f"({P} pixels x {self.stretch}), got {self.seq_len}")
        self.order = (torch.randperm(P, generator=torch.Generator().manual_seed(self.perm_seed))
                      if self.permuted else torch.arange(P))

    @property
    def chance(self):
        return 1.0 / N_CLASSES

    def stream(self, seed, split, batch_size):
        images, labels = (self.test_x, self.test_y) if held_out(split) else (self.train_x, self.train_y)
        for idx in shuffled_indices(len(labels), seed, split, batch_size):
            yield self.sequences(images[idx], labels[idx])

    def sequences(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        B, L = len(labels), self.seq_len
        x = images[:, self.order].repeat_interleave(self.repeat, dim=1).T.unsqueeze(-1).contiguous()
        y = torch.zeros(L, B, dtype=torch.long)
        y[-1] = labels
        mask = torch.zeros(L, B)
        mask[-1] = 1.0
        return self.batch(L, B, x, y, mask)

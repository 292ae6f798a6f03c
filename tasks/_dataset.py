"""Shared parts of the tasks that read a fixed data set: epoch-wise sampling and per-split data.

Such a task has a training part and a held-out part. The `test` stream draws from the held-out
part; every other stream (train, fidelity, validation, ...) from the training part. Each stream
goes through its part in a fresh seeded shuffle every epoch, so a test stream of k batches sees
k * batch distinct examples while the part lasts, and the same seed gives the same batches.
"""
from __future__ import annotations

from typing import Iterator

import torch

from harness.task import stream_seed


def held_out(split: str) -> bool:
    return split == "test"


def shuffled_indices(n: int, seed: int, split: str, batch_size: int) -> Iterator[torch.Tensor]:
    """Endless batches of indices into a part of n examples: a new permutation every epoch."""
    gen = torch.Generator().manual_seed(stream_seed(seed, split))
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=gen)])
        yield pending[:batch_size]
        pending = pending[batch_size:]

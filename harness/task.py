"""The task contract: a seeded generator of batches with a declared loss, score and chance level.

One normaliser everywhere: a loss over any range of steps is the sum of its masked per-position
losses divided by the number of loss positions in the whole batch, so window losses add up to the
sequence loss and window gradients add up to the sequence gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .config import ConfigError, Param, validate_params

LOSSES = ("cross_entropy", "mse")
# score kinds and whether higher is better; "nmse" is the MSE of targets the task has standardised
# (zero mean, unit variance), so predicting the mean scores 1; "bits" is cross-entropy in bits.
SCORES = {"accuracy": True, "mse": False, "nmse": False, "bits": False}
DEFAULT_SCORE = {"cross_entropy": "accuracy", "mse": "mse"}
SPLITS = {"train": 0, "test": 1, "fidelity": 2, "validation": 3, "method": 4, "init": 5}


@dataclass
class Batch:
    x: torch.Tensor           # [L, B, input_size]
    y: torch.Tensor           # [L, B] class ids, or [L, B, out] regression targets
    mask: torch.Tensor        # [L, B] where the loss counts (float 0/1)
    score_mask: torch.Tensor  # [L, B] where the score counts
    loss_kind: str            # one of LOSSES
    score_kind: str = ""      # one of SCORES; default: accuracy for cross_entropy, mse for mse

    def __post_init__(self):
        self.score_kind = self.score_kind or DEFAULT_SCORE[self.loss_kind]

    @property
    def num_steps(self) -> int:
        return self.x.shape[0]

    @property
    def batch_size(self) -> int:
        return self.x.shape[1]

    @property
    def normaliser(self) -> torch.Tensor:
        return self.mask.sum().clamp_min(1.0)

    def to(self, device=None, dtype=None) -> "Batch":
        y = self.y.to(device=device, dtype=dtype) if self.y.is_floating_point() else self.y.to(device)
        return replace(self, x=self.x.to(device=device, dtype=dtype), y=y,
                       mask=self.mask.to(device=device, dtype=dtype),
                       score_mask=self.score_mask.to(device=device, dtype=dtype))

    def tensors(self) -> list[torch.Tensor]:
        return [self.x, self.y, self.mask, self.score_mask]

    def position_losses(self, out: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Per-position losses [stop-start, B] of outputs `out` for steps start..stop-1 (unmasked)."""
        y = self.y[start:stop]
        if self.loss_kind == "cross_entropy":
            return F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none").view(y.shape)
        return ((out - y) ** 2).mean(-1)

    def loss(self, out: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Masked loss of steps start..stop-1, over the whole batch's normaliser."""
        stop = self.num_steps if stop is None else stop
        return (self.position_losses(out, start, stop) * self.mask[start:stop]).sum() / self.normaliser

    def score_sums(self, out: torch.Tensor) -> tuple[float, float]:
        """(sum of per-position scores, number of scored positions) for outputs of the whole sequence."""
        if self.score_kind == "accuracy":
            per = (out.argmax(-1) == self.y).to(self.score_mask.dtype)
        elif self.score_kind == "bits":
            per = self.position_losses(out, 0, self.num_steps) / math.log(2)
        else:
            per = ((out - self.y) ** 2).mean(-1)
        return float((per * self.score_mask).sum()), float(self.score_mask.sum())


class Task:
    """Base class of a task family. Subclasses set the class attributes and implement `generate`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    loss_kind: ClassVar[str] = "cross_entropy"   # cross_entropy -> score is accuracy; mse -> score is MSE
    score_kind: ClassVar[str | None] = None       # one of SCORES, to score otherwise (e.g. bits per character)
    default_seq_len: ClassVar[int] = 50
    # score at which a run counts as having solved the task (compared in the direction of
    # `higher_is_better`); None: the task declares no threshold and tables show no solved fraction
    solved_threshold: ClassVar[float | None] = None
    hyperparameters: ClassVar[dict[str, Param]] = {}

    def __init__(self, seq_len: int, **params: Any):
        if not isinstance(seq_len, int) or seq_len <= 0:
            raise ConfigError(f"{self.name}: sequence length {seq_len!r} must be a positive integer")
        self.seq_len = seq_len
        self.params = validate_params(f"task {self.name}", self.hyperparameters, params)
        for key, value in self.params.items():
            setattr(self, key, value)
        self.check()

    # --- what a subclass declares -------------------------------------------------------------
    input_size: int
    output_size: int   # classes for cross_entropy, output dimension for mse

    @property
    def num_steps(self) -> int:
        """L, the number of time steps of a sequence (may exceed the horizon T)."""
        return self.seq_len

    @property
    def lag(self) -> int | None:
        """The task's dependency lag: the longest distance, in time steps, from an input that a
        target needs to the step where that target is scored (copy T=100: 110). Tables show it beside
        T and L, and the credit-by-lag figure marks it. Default L - 1 (the last target needs the
        first input); None where no such bound exists (a language model, a teacher whose memory
        fades)."""
        return self.num_steps - 1

    @property
    def chance(self) -> float:
        raise NotImplementedError

    def check(self) -> None:
        """Validate combinations of parameters; raise ConfigError."""

    def generate(self, batch_size: int, gen: torch.Generator) -> Batch:
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------
    @classmethod
    def example(cls, workdir: Path) -> "Task":
        """A tiny instance for the test suites (a task reading files writes small ones under `workdir`)."""
        return cls(min(cls.default_seq_len, 4))

    @property
    def metric(self) -> str:
        return self.score_kind or DEFAULT_SCORE[self.loss_kind]

    @property
    def higher_is_better(self) -> bool:
        return SCORES[self.metric]

    def stream(self, seed: int, split: str, batch_size: int) -> Iterator[Batch]:
        """Endless batches; streams of different splits or seeds are independent."""
        gen = torch.Generator().manual_seed(stream_seed(seed, split))
        while True:
            yield self.generate(batch_size, gen)

    def batch(self, L: int, B: int, x, y, mask=None, score_mask=None) -> Batch:
        mask = torch.ones(L, B) if mask is None else mask.float()
        score_mask = mask if score_mask is None else score_mask.float()
        return Batch(x, y, mask, score_mask, self.loss_kind, self.metric)


def stream_seed(seed: int, split: str) -> int:
    """Independent 63-bit seeds per (run seed, split), the same on every machine."""
    return int(np.random.SeedSequence([seed, SPLITS[split]]).generate_state(1, dtype=np.uint64)[0]) >> 1

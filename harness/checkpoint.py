"""Training checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint holds the model, the optimizer, the method's own state (`Method.state_dict`), the
random states (the method's generator and torch's global CPU one; not a CUDA device's, so a method
must draw its randomness from the generator it is given), the step reached and the part of the
record built so far. It lives under `<out>/checkpoints/<hash>.pt`, is written atomically
(temporary file, then rename) so a kill during the write leaves the previous one intact, and is
removed when the run's record is written. The training batches are not stored: their stream is
replayed from its seed up to the step reached, which gives the same batches.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from .store import write_atomic


def path(out: Path, key: str) -> Path:
    return Path(out) / "checkpoints" / f"{key}.pt"


def save(file: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(file, buffer.getvalue())


def load(file: Path) -> dict | None:
    if not file.exists():
        return None
    try:
        # our own file, holding optimizer state and plain Python lists/dicts besides tensors
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - a damaged checkpoint is ignored: the run starts over
        return None


def remove(file: Path) -> None:
    try:
        file.unlink()
    except FileNotFoundError:
        pass

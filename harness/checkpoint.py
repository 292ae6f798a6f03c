"""Training checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint holds the model, the optimizer, the method's own state (`Method.state_dict`), the
random states (the method's generator and torch's global CPU one, as uint8 tensors; not a CUDA
device's, so a method must draw its randomness from the generator it is given), the step reached
and the part of the record built so far. It lives under `<out>/checkpoints/<hash>.pt`, is written
atomically (temporary file, then rename) so a kill during the write leaves the previous one
intact, and is removed when the run's record is written. The training batches are not stored:
their stream is replayed from its seed up to the step reached, which gives the same batches.

A checkpoint is data, never code: it may hold only tensors, numbers, strings, None and lists,
tuples and dicts of them (checked when it is saved), and it is read with
`torch.load(weights_only=True)`, which refuses anything else. A checkpoint that cannot be read
(damaged, or not one of ours) is removed with a warning and the run starts over.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import torch

from .store import write_atomic

PLAIN = (int, float, str, bool, type(None), torch.Tensor)


def path(out: Path, key: str) -> Path:
    return Path(out) / "checkpoints" / f"{key}.pt"


def plain(value, where: str = "state") -> None:
    """Raise TypeError naming the first value in `value` that a weights-only load would refuse."""
    if isinstance(value, PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint {where} has a key of type {type(key).__name__}")
            plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"checkpoint {where} is a {type(value).__module__}.{type(value).__name__}: a checkpoint holds "
                    "only tensors, numbers, strings, None and lists, tuples and dicts of them "
                    "(Method.state_dict must return such values)")


def save(file: Path, state: dict) -> None:
    plain(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(file, buffer.getvalue())


def load(file: Path) -> dict | None:
    """The state saved in `file`, or None (no checkpoint, or one that cannot be read: removed)."""
    if not file.exists():
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if not (isinstance(state, dict) and isinstance(state.get("step"), int)):
            raise ValueError("not a training checkpoint")
        return state
    except Exception as exc:  # noqa: BLE001 - unreadable or refused (it would run code): start over
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"warning: discarded checkpoint {file}: cannot be read as a weights-only checkpoint "
              f"({type(exc).__name__}: {reason[:200]}); the run starts over", file=sys.stderr)
        remove(file)
        return None


def remove(file: Path) -> None:
    try:
        file.unlink()
    except FileNotFoundError:
        pass

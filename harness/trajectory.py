"""A run's parameters at its fidelity checkpoints, kept so other methods can be measured there.

Every method's gradient fidelity is measured at shared parameters (DESIGN.md): the checkpoints of
one reference trajectory, the exact method named by `Method.reference()` (bptt, or sab_bptt for
SAB's network) trained with the run's task, model, seed and training options. That reference is an
ordinary run; like every run it saves its network's state at its fidelity checkpoints in
`OUT/trajectories/<hash>.pt`, written atomically before its record, tensors only (readable with
`torch.load(..., weights_only=True)`): {step: {name: tensor}}.

A method's network may hold parameters the trajectory's network lacks (a synthetic-gradient
module, say); those keep the method's own values at that step, which is why every run saves its
own states too.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from .store import write_atomic

FOLDER = "trajectories"


def path(out: Path, key: str) -> Path:
    return Path(out) / FOLDER / f"{key}.pt"


def snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().clone() for name, t in net.state_dict().items()}


def save(out: Path, key: str, states: dict[int, dict[str, torch.Tensor]]) -> None:
    buffer = io.BytesIO()
    torch.save({int(step): state for step, state in states.items()}, buffer)
    write_atomic(path(out, key), buffer.getvalue())


def load(out: Path, key: str) -> dict[int, dict[str, torch.Tensor]] | None:
    file = path(out, key)
    if not file.exists():
        return None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged file counts as missing: the figures wait for a rerun
        return None


def shared_state(net: torch.nn.Module, reference: dict[str, torch.Tensor],
                 own: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """The state to measure `net` at: every entry the reference holds under the same name and
    shape, the rest from the run's own state at that step. Returns (state, names taken from the
    run's own state), or None when an entry is in neither."""
    state, own_names = {}, []
    for name, current in net.state_dict().items():
        ref = reference.get(name)
        if ref is not None and ref.shape == current.shape:
            state[name] = ref
        elif own is not None and name in own and own[name].shape == current.shape:
            state[name], own_names = own[name], own_names + [name]
        else:
            return None
    return state, own_names

"""Memory and time meters, as defined in DESIGN.md.

Saved bytes: the peak, over one training step (forward and backward), of the bytes autograd holds
for backward at the same moment. Every tensor autograd saves passes through a `saved_tensors_hooks`
pack hook; each storage counts once however many saved tensors view it; parameters and the batch's
own data are excluded (they exist whatever the method does); a storage is released when the last
graph node holding it is freed (the packed handle's finaliser).

Nested hooks. Only the innermost pair of `saved_tensors_hooks` runs, so a method that installs its
own (non-reentrant `torch.utils.checkpoint` does, in the forward pass and again while it recomputes
a segment during backward) would hide its tensors from the meter's hook. While a meter measures
(`saved_tensors_hooks.__enter__` is replaced then, and restored when the last meter stops), every
other `saved_tensors_hooks` entered (by any code, in any thread) has its pack hook wrapped:
whatever tensors the nested hook returns (a tensor, or tensors in a tuple or list) count, each from
its pack until that tensor object is freed, by the same storage ledger (each storage once, the
same exclusions). This is the rule "what the hook keeps is what it returns", and it is exact for
torch.utils.checkpoint: its forward hook returns a token holding no tensor, so a checkpointed
segment holds nothing until backward reaches it; its recomputation hook keeps each recomputed
tensor in a table until the original node unpacks it, and returns that same tensor object, so the
recomputed segment counts from recomputation until each tensor has been used. A nested pack hook
that raises (checkpoint stops recomputing, by an exception, once the last needed tensor is saved,
having already kept it) counts the tensor it was given until its storage is freed (torch keeps a
storage's Python object as long as the storage lives, so its finaliser runs then).
Limits: a nested hook that keeps a tensor elsewhere and returns a token without it is not seen; one
that offloads to another storage (`save_on_cpu`) is counted by its copy, not by the device tensor;
`torch.func` transforms refuse to run under any saved-tensors hook.
"""
from __future__ import annotations

import statistics
import time
import weakref
from contextlib import contextmanager

import torch


class _Held:
    __slots__ = ("tensor", "key", "meter", "__weakref__")

    def __init__(self, tensor, key, meter):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        self.meter._release(self.key)


class SavedBytesMeter:
    def __init__(self, exclude: list[torch.Tensor]):
        self._excluded = {self._key(p) for p in exclude}
        self._refs: dict[tuple, int] = {}
        self._sizes: dict[tuple, int] = {}
        self.current = 0
        self.peak = 0

    @staticmethod
    def _key(t: torch.Tensor) -> tuple:
        return (t.device.type, t.device.index, t.untyped_storage().data_ptr())

    def _counted(self, t: torch.Tensor) -> tuple | None:
        """The ledger key of t's storage, or None when it is excluded or has no data."""
        key = self._key(t)
        if key in self._excluded or t.untyped_storage().data_ptr() == 0:
            return None
        return key

    def _acquire(self, key: tuple, nbytes: int) -> None:
        if key not in self._refs:
            self._refs[key] = 0
            self._sizes[key] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        self._refs[key] += 1

    def _pack(self, t: torch.Tensor):
        key = self._counted(t)
        if key is None:
            return t
        self._acquire(key, t.untyped_storage().nbytes())
        return _Held(t, key, self)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed

    def _release(self, key):
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.current -= self._sizes.pop(key)

    def _hold_until_freed(self, obj, t: torch.Tensor) -> None:
        """Count t's storage until `obj` (t itself, or its storage) is freed."""
        key = self._counted(t)
        if key is not None:
            self._acquire(key, t.untyped_storage().nbytes())
            weakref.finalize(obj, self._release, key)

    def _seeing(self, inner_pack):
        """`inner_pack`, a nested hook's pack, with what it keeps counted (module docstring)."""
        def pack(t):
            try:
                packed = inner_pack(t)
            except BaseException:
                self._hold_until_freed(t.untyped_storage(), t)
                raise
            for kept in packed if isinstance(packed, (tuple, list)) else (packed,):
                if isinstance(kept, torch.Tensor):
                    self._hold_until_freed(kept, kept)
            return packed
        return pack

    @contextmanager
    def measure(self):
        _MEASURING.append(self)
        if len(_MEASURING) == 1:
            _hooks.__enter__ = _enter_seen
        try:
            with _MeterHooks(self._pack, self._unpack):
                yield self
        finally:
            _MEASURING.remove(self)
            if not _MEASURING:
                _hooks.__enter__ = _enter


_hooks = torch.autograd.graph.saved_tensors_hooks
_enter = _hooks.__enter__
_MEASURING: list[SavedBytesMeter] = []   # meters measuring now, innermost last


class _MeterHooks(_hooks):
    """The meter's own hooks, which are not wrapped."""


def _enter_seen(hooks) -> None:
    """saved_tensors_hooks.__enter__ while a meter measures: push the hooks with the pack wrapped."""
    if not _MEASURING or isinstance(hooks, _MeterHooks):
        return _enter(hooks)
    pack = hooks.pack_hook
    hooks.pack_hook = _MEASURING[-1]._seeing(pack)
    try:
        return _enter(hooks)
    finally:
        hooks.pack_hook = pack


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def cuda_peak(device: torch.device, into: dict):
    """CUDA peak allocated during the block, minus what was allocated when it began."""
    if device.type != "cuda":
        into["cuda_peak_bytes"] = None
        yield
        return
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    yield
    synchronize(device)
    into["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device) - base


class StepTimer:
    """Wall-clock per training step, device synchronised before the clock is read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []
        self.updates: list[int] = []

    @contextmanager
    def step(self):
        synchronize(self.device)
        t0 = time.perf_counter()
        box = {}
        yield box
        synchronize(self.device)
        self.times.append(time.perf_counter() - t0)
        self.updates.append(box.get("updates", 1))

    def summary(self, warmup: int) -> dict:
        times, updates = self.times[warmup:] or self.times, self.updates[warmup:] or self.updates
        if not times:
            return {"ms_per_step": None, "ms_per_update": None, "updates_per_step": None}
        per_update = [t / max(u, 1) for t, u in zip(times, updates)]
        return {"ms_per_step": 1e3 * statistics.median(times),
                "ms_per_update": 1e3 * statistics.median(per_update),
                "updates_per_step": statistics.median(updates),
                "timed_steps": len(times)}

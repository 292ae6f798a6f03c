"""Memory and time meters, as defined in DESIGN.md.

Saved bytes: the peak, over one training step, of the bytes autograd holds for backward at the
same moment. Every tensor autograd saves passes through a `saved_tensors_hooks` pack hook; each
storage counts once however many saved tensors view it; parameters and the batch's own data are
excluded (they exist whatever the method does); a storage is released when the last graph node
holding it is freed (the packed handle's finaliser).
"""
from __future__ import annotations

import statistics
import time
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

    def _pack(self, t: torch.Tensor):
        key = self._key(t)
        if key in self._excluded or t.untyped_storage().data_ptr() == 0:
            return t
        if key not in self._refs:
            self._refs[key] = 0
            self._sizes[key] = t.untyped_storage().nbytes()
            self.current += self._sizes[key]
            self.peak = max(self.peak, self.current)
        self._refs[key] += 1
        return _Held(t, key, self)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed

    def _release(self, key):
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.current -= self._sizes.pop(key)

    @contextmanager
    def measure(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield self


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

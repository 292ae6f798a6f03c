"""Limits checked before anything trains: how many seeds, and whether a run can fit in memory.

The grid's size is bounded where it is parsed (config.MAX_RUNS). The memory check compares a
lower bound of what one run needs with the memory available here, and refuses a run list whose
runs cannot fit (a judgement: `--force` runs them anyway). The bound counts what every run
holds, whatever its method: the parameters with their gradients and two optimizer moments; the
activations that full BPTT keeps for the reference gradient at the fidelity checkpoints
(per step and sequence, SAVED_PER_STEP x hidden values: measured saved bytes of bptt); the
held-out and fidelity batches; and for a stochastic method its K gradient draws in float64.
"""
from __future__ import annotations

import resource
from pathlib import Path

from .config import ConfigError

MAX_SEEDS = 10_000
# values autograd keeps per time step, sequence and hidden unit for full BPTT (saved_tensors_hooks
# count of bptt on the adding task, hidden 16-128: rnn 1.01-1.08, gru and lstm 7.01-7.08)
SAVED_PER_STEP = {"rnn": 1, "gru": 7, "lstm": 7}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def estimate_bytes(cfg, task, eval_task, stochastic: bool) -> int:
    """A lower bound of the bytes one run of `cfg` holds at once (module docstring)."""
    item = 8 if cfg.dtype == "float64" else 4
    H, B, L = cfg.hidden, cfg.batch, task.num_steps
    I, O = task.input_size, task.output_size
    params = GATES.get(cfg.cell, 1) * H * (I + H + 2) + O * (H + 1)
    activations = SAVED_PER_STEP.get(cfg.cell, 1) * L * B * H
    batches = (cfg.eval_batches * eval_task.num_steps + 2 * L) * B * I
    draws = 2 * cfg.grad_samples * params if stochastic else 0   # float64: two float32 items
    return item * (4 * params + activations + batches + draws)


def available_bytes(device: str) -> int | None:
    """Memory this process can still allocate: free device memory on a GPU; on the CPU the least of
    the system's available memory, its cgroup's limit less its use, and the address-space limit
    (ulimit -v) less the address space in use. None when none of these can be read."""
    if device.startswith("cuda"):
        import torch
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    found = []
    meminfo = _fields(Path("/proc/meminfo"))
    if "MemAvailable" in meminfo:
        found.append(meminfo["MemAvailable"] * 1024)
    group = _cgroup_dir()
    if group is not None:
        limit, used = _number(group / "memory.max"), _number(group / "memory.current")
        if limit is not None and used is not None:
            found.append(limit - used)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        status = _fields(Path("/proc/self/status"))
        found.append(soft - status.get("VmSize", 0) * 1024)
    return max(0, min(found)) if found else None


def _fields(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            words = rest.split()
            if words and words[0].isdigit():
                out[key.strip()] = int(words[0])
    except OSError:
        pass
    return out


def _cgroup_dir() -> Path | None:
    """This process's cgroup v2 folder."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                folder = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
                return folder if (folder / "memory.max").exists() else None
    except OSError:
        pass
    return None


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def budget(executor) -> tuple[int | None, str] | None:
    """(bytes one run may use, where) for runs on `executor`, None to leave the check to the runs:
    here, the memory available shared by the runs that run at once; under SLURM the jobs' mem_gb
    (the login node's memory says nothing about the compute nodes'; without mem_gb no check)."""
    if executor.name == "slurm":
        mem_gb = executor.params.get("mem_gb")
        return (int(float(mem_gb) * 2**30), "per SLURM job (mem_gb)") if isinstance(mem_gb, (int, float)) else None
    if executor.concurrent > 1:
        return None, f"per run with {executor.concurrent} runs at once"
    return None, ""


def check_memory(configs: list, available: int | None = None, where: str = "", share: int = 1) -> None:
    """Raise ConfigError when a run of `configs` needs more memory than is available (one line
    naming the run's sizes, the estimate and what is available): `available` bytes if given, else
    what this machine has divided by `share` (runs at once)."""
    from .registry import METHODS   # the methods the user named, already imported
    budgets: dict[str, int | None] = {}
    seen = set()
    for cfg in configs:
        key = (cfg.task, str(cfg.task_params), cfg.seq_len, cfg.eval_seq_len, cfg.cell, cfg.hidden, cfg.batch,
               cfg.dtype, cfg.eval_batches, cfg.device, METHODS.get(cfg.method).gradient_kind, cfg.grad_samples)
        if key in seen:
            continue
        seen.add(key)
        if cfg.device not in budgets:
            here = available_bytes(cfg.device) if available is None else None
            budgets[cfg.device] = available if available is not None else (None if here is None else here // share)
        budget = budgets[cfg.device]
        if budget is None:
            continue
        task = cfg.build_task()
        eval_task = cfg.build_task(cfg.eval_seq_len) if cfg.eval_seq_len else task
        need = estimate_bytes(cfg, task, eval_task, METHODS.get(cfg.method).gradient_kind == "stochastic")
        if need > budget:
            raise ConfigError(
                f"{cfg.task} T={cfg.seq_len} (L={task.num_steps} steps) with --cell {cfg.cell} --hidden {cfg.hidden} "
                f"--batch {cfg.batch}: a run needs at least {_size(need)} (parameters and optimizer state, the "
                f"activations full BPTT keeps for the reference gradient, the held-out batches), more than the "
                f"{_size(budget)} available {where or 'on ' + cfg.device}; use a smaller --hidden, --batch or "
                f"--seq-len, or --force to run it anyway")

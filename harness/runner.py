"""Train one configuration and measure it; run a list of configurations, skipping finished ones.

A run never raises into the sweep: an exception is recorded as status "failed" with its text, a
non-finite loss as "diverged", and the next run goes on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint as saved
from . import credit, fidelity, store
from .config import ConfigError
from .meters import SavedBytesMeter, StepTimer, cuda_peak, synchronize
from .method import Method, RunSpec, Updater
from .models import CELLS, make_cell, run
from .registry import METHODS, TASKS
from .task import Task, stream_seed

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class RunConfig:
    method: str
    task: str
    method_params: dict = field(default_factory=dict)
    task_params: dict = field(default_factory=dict)
    seq_len: int = 50
    eval_seq_len: int | None = None
    cell: str = "lstm"
    tau: float | None = None          # the leaky cell's time constant (None: its default; other cells: none)
    hidden: int = 64
    batch: int = 32
    steps: int = 200
    optimizer: str = "adam"
    lr: float = 1e-3
    clip: float | None = 1.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    eval_every: int | None = None     # default: about 20 points on the learning curve
    eval_batches: int = 4
    fidelity_points: int = 3          # checkpoints, step 0 and the end included
    grad_samples: int = 16            # K draws for stochastic methods
    warmup: int = 3

    def __post_init__(self):
        # the leaky cell's default time constant is written into the configuration (and its hash), so
        # `--cell leaky` and `--cell leaky --tau 10` are one run
        if self.tau is None and self.cell in CELLS:
            self.tau = CELLS[self.cell].default_tau

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    # --- objects the run is made of; building them validates the configuration ---------------
    def build_task(self, seq_len: int | None = None) -> Task:
        return TASKS.get(self.task)(seq_len or self.seq_len, **self.task_params)

    def build_method(self) -> Method:
        return METHODS.get(self.method)(**self.method_params)

    def spec(self, task: Task) -> RunSpec:
        return RunSpec(self.cell, task.input_size, self.hidden, task.output_size, task.num_steps,
                       self.batch, DTYPES[self.dtype], self.tau)

    def validate(self) -> None:
        """Everything that can be checked before training; raises ConfigError."""
        for key in ("seq_len", "hidden", "batch", "steps", "threads", "eval_batches", "fidelity_points",
                    "grad_samples"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--{key.replace('_', '-')} {value!r} must be a positive integer")
        if self.eval_seq_len is not None and self.eval_seq_len <= 0:
            raise ConfigError(f"--eval-seq-len {self.eval_seq_len!r} must be a positive integer")
        if self.optimizer not in OPTIMIZERS:
            from .config import unknown
            raise unknown("optimizer", self.optimizer, list(OPTIMIZERS))
        if not self.lr > 0:
            raise ConfigError(f"--lr {self.lr!r} must be positive")
        if self.clip is not None and not self.clip > 0:
            raise ConfigError(f"--clip {self.clip!r} must be positive (or 0 for no clipping)")
        make_cell(self.cell, 1, 1, self.tau)   # an unknown cell, a bad --tau or --tau for a cell without one
        task = self.build_task()
        if self.eval_seq_len:
            self.build_task(self.eval_seq_len)
        self.build_method().check(self.spec(task))

    def key(self) -> str:
        return store.config_hash(self.as_dict(), self.code_hash())

    def code_hash(self) -> str:
        return store.source_hash(METHODS.get(self.method), TASKS.get(self.task))


def environment(device: torch.device, threads: int) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "threads": threads, "git_commit": commit,
            "hostname": platform.node()}


def evaluate(net, batches) -> tuple[float, float]:
    """(mean loss, score) over fixed held-out batches."""
    losses, score, count = [], 0.0, 0.0
    with torch.no_grad():
        for b in batches:
            out, _ = run(net, b.x, net.init_carry(b.batch_size))
            losses.append(float(b.loss(out)))
            s, c = b.score_sums(out)
            score, count = score + s, count + c
    return float(np.mean(losses)), score / max(count, 1.0)


def checkpoints(steps: int, n: int) -> list[int]:
    """n steps (at least 0 and the end) at which fidelity is measured."""
    return sorted({round(i * steps / max(n - 1, 1)) for i in range(n)} | {0, steps})


def params_digest(net) -> str:
    """sha256 of the parameters' bytes: two runs reached bitwise the same weights iff equal."""
    h = hashlib.sha256()
    for name, p in net.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def train(cfg: RunConfig, progress: bool = False, checkpoint_every: int | None = None,
          checkpoint_file: Path | None = None) -> dict:
    """Train and measure one configuration; returns the record (without the status fields).

    With `checkpoint_every`, the run's full state is saved to `checkpoint_file` every that many
    steps, and a run that finds a checkpoint there continues from it with the same result."""
    device = torch.device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    torch.set_num_threads(cfg.threads)
    task, method = cfg.build_task(), cfg.build_method()
    eval_task = cfg.build_task(cfg.eval_seq_len) if cfg.eval_seq_len else task
    spec = cfg.spec(task)
    method.check(spec)
    torch.manual_seed(stream_seed(cfg.seed, "init"))
    net = method.build_network(spec).to(device=device, dtype=dtype)
    optimizer = OPTIMIZERS[cfg.optimizer](net.parameters(), lr=cfg.lr)
    updater = Updater(net, optimizer, cfg.clip or None)
    rng = torch.Generator().manual_seed(stream_seed(cfg.seed, "method"))

    train_stream = task.stream(cfg.seed, "train", cfg.batch)
    test_stream = eval_task.stream(cfg.seed, "test", cfg.batch)
    test_batches = [next(test_stream).to(device, dtype) for _ in range(cfg.eval_batches)]
    fid_batch = next(task.stream(cfg.seed, "fidelity", cfg.batch)).to(device, dtype)

    eval_every = cfg.eval_every or max(1, cfg.steps // 20)
    fid_steps = set(checkpoints(cfg.steps, cfg.fidelity_points))
    timer = StepTimer(device)
    record = {"n_params": sum(p.numel() for p in net.parameters()), "method_label": method.label,
              "gradient_kind": method.gradient_kind, "chance": task.chance, "metric": task.metric,
              "higher_is_better": task.higher_is_better, "solved_threshold": task.solved_threshold,
              "num_steps": task.num_steps,
              "eval_num_steps": eval_task.num_steps, "curve": [], "fidelity": [], "status": "running"}
    memory = {}
    wall, losses = 0.0, []

    def checkpoint(step):
        if step % eval_every == 0 or step == cfg.steps:
            test_loss, score = evaluate(net, test_batches)
            point = {"step": step, "sequences": step * cfg.batch, "updates": updater.updates,
                     "wall_s": wall, "train_loss": float(np.mean(losses)) if losses else None,
                     "test_loss": test_loss, "score": score}
            extra = method.diagnostics(net, test_batches[0])   # the method's own curves (SAB's attention)
            if extra:
                point["diagnostics"] = {k: float(v) for k, v in extra.items()}
            record["curve"].append(point)
            losses.clear()
        if step in fid_steps:
            record["fidelity"].append({"step": step, **fidelity.measure(method, net, fid_batch, cfg.seed,
                                                                        cfg.grad_samples)})

    def save_state(step):
        state = {"step": step, "net": net.state_dict(), "optimizer": optimizer.state_dict(),
                 "method": method.state_dict(), "rng": rng.get_state(), "torch_rng": torch.get_rng_state(),
                 "updates": updater.updates, "record": record, "memory": memory, "wall": wall,
                 "losses": list(losses), "times": timer.times, "timer_updates": timer.updates}
        saved.save(checkpoint_file, state)

    first = 1
    state = saved.load(checkpoint_file) if checkpoint_every and checkpoint_file else None
    if state is not None:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        updater.updates, wall, memory = state["updates"], state["wall"], state["memory"]
        record, losses = state["record"], state["losses"]
        timer.times[:], timer.updates[:] = state["times"], state["timer_updates"]
        for _ in range(state["step"]):  # replay the batch stream from its seed to where the run stopped
            next(train_stream)
        first = state["step"] + 1
        record["resumed_from_step"] = state["step"]

    bar = tqdm(total=cfg.steps, initial=first - 1, desc=f"{method.label} {task.name}", leave=False,
               disable=not progress)
    if first == 1:
        checkpoint(0)
    step = first - 1
    for step in range(first, cfg.steps + 1):
        batch = next(train_stream).to(device, dtype)
        before = updater.updates
        if step == 1:  # the first step is a warm-up step: measure memory there, not time
            meter = SavedBytesMeter(list(net.parameters()) + batch.tensors())
            with cuda_peak(device, memory), meter.measure(), timer.step() as box:
                loss = method.train_step(net, batch, updater, rng)
                box["updates"] = updater.updates - before
            memory.update(saved_bytes=meter.peak, state_bytes=method.state_bytes())
        else:
            with timer.step() as box:
                loss = method.train_step(net, batch, updater, rng)
                box["updates"] = updater.updates - before
        wall += timer.times[-1]
        losses.append(loss)
        bar.update()
        if not math.isfinite(loss):
            record.update(status="diverged", error=f"non-finite training loss {loss} at step {step}")
            break
        checkpoint(step)
        if checkpoint_every and checkpoint_file and step % checkpoint_every == 0 and step < cfg.steps:
            save_state(step)
    bar.close()
    record["steps_done"] = step
    record["memory"] = memory
    record["time"] = {**timer.summary(min(cfg.warmup, max(len(timer.times) - 1, 0))), "threads": cfg.threads}
    record["final"] = {"score": record["curve"][-1]["score"], "test_loss": record["curve"][-1]["test_loss"]}
    if record["status"] == "running":
        record["credit_by_lag"] = credit.measure(method, net, fid_batch,
                                                 torch.Generator().manual_seed(stream_seed(cfg.seed, "method")))
        # the validation stream, separate from the test stream, is what tuning selects on
        val_stream = eval_task.stream(cfg.seed, "validation", cfg.batch)
        val_loss, val_score = evaluate(net, [next(val_stream).to(device, dtype) for _ in range(cfg.eval_batches)])
        record["final"].update(validation_score=val_score, validation_loss=val_loss)
        record["status"] = "ok"
    record["params_sha"] = params_digest(net)
    return record


def base_record(cfg: RunConfig, executor: dict | None = None) -> dict:
    return {"hash": cfg.key(), "config": cfg.as_dict(), "code_hash": cfg.code_hash(),
            "env": environment(torch.device(cfg.device), cfg.threads),
            "executor": executor or {"name": "local", "concurrent": 1},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def failed_record(cfg: RunConfig, error: str, executor: dict | None = None) -> dict:
    """The record of a run that could not report itself (its worker died)."""
    return {**base_record(cfg, executor), "status": "failed", "error": error,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def run_config(cfg: RunConfig, out: Path, progress: bool = False, checkpoint_every: int | None = None,
               executor: dict | None = None) -> dict:
    """Train one configuration and write its record; failures are recorded, never raised.

    An interruption (KeyboardInterrupt, SystemExit) writes no record: the run counts as not done,
    and resumes from its last checkpoint if it has one."""
    base = base_record(cfg, executor)
    ckpt = saved.path(out, base["hash"]) if checkpoint_every else None
    try:
        record = {**base, **train(cfg, progress, checkpoint_every, ckpt)}
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a crashing run is a result, the sweep goes on
        record = {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=8)}
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    store.save(out, record)
    saved.remove(saved.path(out, base["hash"]))
    return record


def run_all(configs: list[RunConfig], out: Path, progress: bool = True) -> list[dict]:
    """Run every configuration whose record is not finished; return the records of all of them."""
    out = Path(out)
    todo = [c for c in configs if not store.is_finished(out, c.key())]
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="runs", disable=not progress)
    for cfg in todo:
        record = run_config(cfg, out, progress)
        bar.set_postfix_str(f"last: {record['status']}")
        bar.update()
    bar.close()
    return [store.load(out, c.key()) for c in configs]


def check_writable(out: Path) -> None:
    try:
        store.runs_dir(out).mkdir(parents=True, exist_ok=True)
        probe = store.runs_dir(out) / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output folder '{out}' is not writable: {exc.strerror or exc}") from None

"""Train one configuration and measure it; run a list of configurations, skipping finished ones.

A run never raises into the sweep: an exception is recorded as status "failed" with its text, a
non-finite training loss, test loss, score, validation score or gradient at the run's own
parameters as "diverged" (with `diverged_at`, the step), and the next run goes on.

Gradient fidelity is measured twice (DESIGN.md): during training at the run's own parameters
(`fidelity_own`), and at the shared parameters of a reference trajectory (`fidelity`), the
checkpoints of the exact method `Method.reference()` names, trained with the same task, model,
seed and training options. A run measures the shared figures at its end when the reference's
record and trajectory are on disk (a sweep schedules references first); otherwise
`fidelity_pass` adds them to its record after the sweep, so no run waits for another.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checkpoint as saved
from . import credit, fidelity, interrupt, locks, store, trajectory
from .config import ConfigError
from .meters import SavedBytesMeter, StepTimer, cuda_peak, synchronize
from .method import Method, RunSpec, Updater
from .models import CELLS, make_cell, run
from .registry import METHODS, TASKS
from .schema import InvalidRecord
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

    def identity(self) -> dict:
        """The configuration with the method's registered name in place of how it was given (a file
        path, module:Class): a method loaded from a file and the same file among `methods/` are one
        method when their name and source agree."""
        return {**self.as_dict(), "method": METHODS.get(self.method).name}

    def key(self) -> str:
        return store.config_hash(self.identity(), self.code_hash())

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


def finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def train(cfg: RunConfig, progress: bool = False, checkpoint_every: int | None = None,
          checkpoint_file: Path | None = None, out: Path | None = None) -> dict:
    """Train and measure one configuration; returns the record (without the status fields).

    With `checkpoint_every`, the run's full state is saved to `checkpoint_file` every that many
    steps, and a run that finds a checkpoint there continues from it with the same result.
    With `out`, the network's states at the fidelity checkpoints are saved under
    `out/trajectories/` and the shared-parameter fidelity is measured if its reference is there."""
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
              "num_steps": task.num_steps, "lag": task.lag, "eval_lag": eval_task.lag,
              "eval_num_steps": eval_task.num_steps, "curve": [], "fidelity_own": [], "status": "running"}
    memory = {}
    wall, losses = 0.0, []
    states: dict[int, dict] = {}       # the network at each fidelity checkpoint (the run's trajectory)
    norms: list[torch.Tensor] = []     # pre-clip gradient norm of every update

    def checkpoint(step) -> str | None:
        """Evaluate and measure at `step`; returns why the run diverged there, if it did."""
        evaluated = None
        if step % eval_every == 0 or step == cfg.steps:
            test_loss, score = evaluated = evaluate(net, test_batches)
            point = {"step": step, "sequences": step * cfg.batch, "updates": updater.updates,
                     "wall_s": wall, "train_loss": float(np.mean(losses)) if losses else None,
                     "test_loss": test_loss, "score": score}
            extra = method.diagnostics(net, test_batches[0])   # the method's own curves (SAB's attention)
            if extra:
                point["diagnostics"] = {k: float(v) for k, v in extra.items()}
            record["curve"].append(point)
            losses.clear()
        if step in fid_steps:
            # the score here is what a reference trajectory reports beside other methods' figures
            test_loss, score = evaluated = evaluated or evaluate(net, test_batches)
        if evaluated and not finite(*evaluated):
            return f"non-finite test loss {evaluated[0]} or score {evaluated[1]} at step {step}"
        if step in fid_steps:
            entry = {"step": step, **fidelity.measure(method, net, fid_batch, cfg.seed, cfg.grad_samples),
                     "score": evaluated[1]}
            record["fidelity_own"].append(entry)
            if entry.get("nonfinite"):
                return f"non-finite {entry['nonfinite']} gradient at step {step}"
            states[step] = trajectory.snapshot(net)
        return None

    def diverged(step, why):
        record.update(status="diverged", error=why, diverged_at=step)

    def save_state(step):
        state = {"step": step, "net": net.state_dict(), "optimizer": optimizer.state_dict(),
                 "method": method.state_dict(), "rng": rng.get_state(), "torch_rng": torch.get_rng_state(),
                 "updates": updater.updates, "record": record, "memory": memory, "wall": wall,
                 "losses": list(losses), "times": timer.times, "timer_updates": timer.updates,
                 "states": states, "norms": torch.cat(norms) if norms else torch.zeros(0, dtype=torch.float64)}
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
        states.update(state["states"])
        norms.append(state["norms"])
        for _ in range(state["step"]):  # replay the batch stream from its seed to where the run stopped
            next(train_stream)
        first = state["step"] + 1
        record["resumed_from_step"] = state["step"]

    bar = tqdm(total=cfg.steps, initial=first - 1, desc=f"{method.label} {task.name}", leave=False,
               disable=not progress)
    step = first - 1
    if first == 1 and (why := checkpoint(0)):
        diverged(0, why)
        first = cfg.steps + 1
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
        norms.append(updater.take_norms())
        bar.update()
        if not math.isfinite(loss):
            diverged(step, f"non-finite training loss {loss} at step {step}")
            break
        if why := checkpoint(step):   # a divergence on the last update shows only here
            diverged(step, why)
            break
        if checkpoint_every and checkpoint_file and step % checkpoint_every == 0 and step < cfg.steps:
            save_state(step)
    bar.close()
    record["steps_done"] = step
    record["memory"] = memory
    record["time"] = {**timer.summary(min(cfg.warmup, max(len(timer.times) - 1, 0))), "threads": cfg.threads}
    record["training"] = training_figures(torch.cat(norms) if norms else torch.zeros(0), cfg.clip, updater.updates)
    last = record["curve"][-1] if record["curve"] else {"score": None, "test_loss": None}
    record["final"] = {"score": last["score"], "test_loss": last["test_loss"]}
    if record["status"] == "running":
        # the validation stream, separate from the test stream, is what tuning selects on
        val_stream = eval_task.stream(cfg.seed, "validation", cfg.batch)
        val_loss, val_score = evaluate(net, [next(val_stream).to(device, dtype) for _ in range(cfg.eval_batches)])
        record["final"].update(validation_score=val_score, validation_loss=val_loss)
        if not finite(val_loss, val_score):
            diverged(step, f"non-finite validation loss {val_loss} or score {val_score} at step {step}")
    if record["status"] == "running":
        record["credit_by_lag"] = credit.measure(method, net, fid_batch,
                                                 torch.Generator().manual_seed(stream_seed(cfg.seed, "method")))
        record["status"] = "ok"
    record["params_sha"] = params_digest(net)
    if out is not None:   # before the record: a finished record means its trajectory is on disk
        trajectory.save(out, cfg.key(), states)
    if record["status"] == "ok":
        try:
            record.update(shared_fidelity(cfg, out, record, states))
        except Exception as exc:  # noqa: BLE001 - the run itself is finished and ok; the pass after the sweep retries
            record["fidelity_reference"] = {"pending": True, "error": f"{type(exc).__name__}: {exc}"}
    return record


def training_figures(norms: torch.Tensor, clip: float | None, updates: int) -> dict:
    """What the updates were made of: the pre-clip gradient norms' median and largest value, and
    the fraction of updates that clipping shortened (0 without clipping)."""
    norms = norms.double().numpy()
    ok = norms[np.isfinite(norms)]
    return {"updates": updates, "clip": clip,
            "clipped_fraction": float(np.mean(norms > clip)) if clip and len(norms) else 0.0 if len(norms) else None,
            "grad_norm_median": float(np.median(ok)) if len(ok) else None,
            "grad_norm_max": float(ok.max()) if len(ok) else None,
            "nonfinite_updates": int(len(norms) - len(ok))}


# --- shared-parameter fidelity ---------------------------------------------------------------
def reference_config(cfg: RunConfig) -> RunConfig:
    """The run whose trajectory supplies `cfg`'s shared parameters: the method `reference()` names,
    its hyperparameters without those equal to their default (as typed on the command line, so it
    is the same run as the same method typed by a user), and everything else of `cfg`."""
    name, params = cfg.build_method().reference()
    declared = METHODS.get(name).hyperparameters
    params = {k: v for k, v in params.items() if not (k in declared and v == declared[k].default)}
    return dataclasses.replace(cfg, method=name, method_params=params)


def shared_fidelity(cfg: RunConfig, out: Path | None, record: dict,
                    states: dict[int, dict] | None = None) -> dict:
    """Fidelity of `cfg`'s method at the checkpoints of its reference trajectory, on the same
    held-out batch for every method: {"fidelity": [...], "fidelity_reference": {...}}, or only
    "fidelity_reference" (what it waits for) when the reference is not finished in `out` yet.
    `states`: the run's own states at its checkpoints (default: its trajectory file)."""
    ref = reference_config(cfg)
    ref_key = ref.key()
    info = {"method": ref.method, "label": ref.build_method().label, "hash": ref_key}
    if ref_key == cfg.key():   # the run is its own reference: its own figures are the shared ones
        ref_record, entries = record, [dict(e) for e in record.get("fidelity_own", [])]
    else:
        ref_record = store.load(out, ref_key) if out is not None else None
        reference = trajectory.load(out, ref_key) if ref_record and ref_record.get("status") in ("ok", "diverged") \
            else None
        if reference is None:
            return {"fidelity_reference": {**info, "pending": True}}
        own = states if states is not None else trajectory.load(out, cfg.key()) or {}
        entries, own_names = measure_at(cfg, reference, own)
        if own_names:
            info["own_parameters"] = own_names
    info.update(status=ref_record.get("status"), measured="in the run")
    scores = {e["step"]: e.get("score") for e in ref_record.get("fidelity_own", [])}
    threshold, higher = record.get("solved_threshold"), record.get("higher_is_better", True)
    for e in entries:
        e.pop("score", None)
        score = scores.get(e["step"])
        e["reference_score"] = score
        e["reference_solved"] = (None if threshold is None or score is None
                                 else bool(score >= threshold if higher else score <= threshold))
    return {"fidelity": entries, "fidelity_reference": info}


def measure_at(cfg: RunConfig, reference: dict[int, dict], own: dict[int, dict]) -> tuple[list[dict], list[str]]:
    """Measure a fresh instance of the method at each checkpoint the reference reached: the
    reference's state where names and shapes match, the run's own state for the rest."""
    torch.set_num_threads(cfg.threads)
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    task, method = cfg.build_task(), cfg.build_method()
    spec = cfg.spec(task)
    method.check(spec)
    with torch.random.fork_rng(devices=[]):   # the initial values are overwritten; leave torch's generator alone
        net = method.build_network(spec).to(device=device, dtype=dtype)
    batch = next(task.stream(cfg.seed, "fidelity", cfg.batch)).to(device, dtype)
    entries, own_names = [], set()
    for step in checkpoints(cfg.steps, cfg.fidelity_points):
        picked = trajectory.shared_state(net, reference[step], own.get(step)) if step in reference else None
        if picked is None:   # the reference (or, for its own parameters, the run) diverged before this step
            continue
        state, names = picked
        net.load_state_dict(state)
        own_names.update(names)
        entries.append({"step": step, **fidelity.measure(method, net, batch, cfg.seed, cfg.grad_samples)})
    return entries, sorted(own_names)


def needs_shared_fidelity(record: dict | None, cfg: RunConfig) -> bool:
    """An ok record without shared figures, or with figures from a reference that has since changed."""
    if not record or record.get("status") != "ok":
        return False
    info = record.get("fidelity_reference") or {}
    return "fidelity" not in record or info.get("pending") or info.get("hash") != reference_config(cfg).key()


def fidelity_pass(configs: list[RunConfig], out: Path, progress: bool = False) -> dict[str, int]:
    """Add the shared-parameter figures to every finished record of `configs` that lacks them (its
    reference finished after it: parallel executors), rewriting the record atomically. Returns
    {"measured": n, "waiting": runs whose reference is not finished, "busy": runs another process is
    writing now, left as they are, "errors": n}. Raises OSError when a record cannot be written."""
    counts = {"measured": 0, "waiting": 0, "busy": 0, "errors": 0}
    todo = [c for c in configs if needs_shared_fidelity(store.load(out, c.key()), c)]
    for cfg in tqdm(todo, desc="shared-parameter fidelity", disable=not progress or not todo):
        record = store.load(out, cfg.key())
        try:
            shared = shared_fidelity(cfg, out, record)
        except Exception as exc:  # noqa: BLE001 - the sweep's records stay as they are; say why
            counts["errors"] += 1
            print(f"warning: shared-parameter fidelity of {cfg.method} seed {cfg.seed}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            continue
        waiting = "fidelity" not in shared
        if waiting and record.get("fidelity_reference") == shared["fidelity_reference"] and "fidelity" not in record:
            counts["waiting"] += 1
            continue   # nothing new: the record stays as it is
        # one writer per run: a run rewritten meanwhile (another command, --force) keeps its new record
        with locks.run_lock(out, cfg.key(), wait=False) as free:
            now = store.load(out, cfg.key()) if free is not None else None
            if now is None or (now.get("started"), now.get("finished")) != (record.get("started"), record.get("finished")):
                counts["busy"] += 1
                continue
            if not waiting:
                shared["fidelity_reference"]["measured"] = "after the sweep"
            counts["waiting" if waiting else "measured"] += 1
            store.save(out, {**{k: v for k, v in record.items() if k != "fidelity"}, **shared})
    return counts


def base_record(cfg: RunConfig, executor: dict | None = None) -> dict:
    method = METHODS.get(cfg.method)
    try:
        label = cfg.build_method().label
    except interrupt.Interrupted:
        raise
    except BaseException:  # noqa: BLE001 - a record is written whatever the method does
        label = method.name
    # what readers need about the method, stored so that reading never imports it
    return {"hash": cfg.key(), "config": cfg.as_dict(), "code_hash": cfg.code_hash(), "method_label": label,
            "method_name": method.name,
            "method_defaults": {k: p.default for k, p in method.hyperparameters.items()},
            "env": environment(torch.device(cfg.device), cfg.threads),
            "executor": executor or {"name": "local", "concurrent": 1},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def failed_record(cfg: RunConfig, error: str, executor: dict | None = None, base: dict | None = None) -> dict:
    """The record of a run that failed, or could not report itself (its worker died)."""
    return {**(base or base_record(cfg, executor)), "status": "failed", "error": error,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def run_config(cfg: RunConfig, out: Path, progress: bool = False, checkpoint_every: int | None = None,
               executor: dict | None = None) -> dict:
    """Train one configuration and write its record; failures are recorded, never raised.

    Whatever the method's code raises, SystemExit and KeyboardInterrupt included, is the run's
    `failed` record. Only a real signal (interrupt.Interrupted: Ctrl-C, or SIGTERM under the
    command line) stops it without a record: the run counts as not done, and resumes from its
    last checkpoint if it has one."""
    base = base_record(cfg, executor)
    ckpt = saved.path(out, base["hash"]) if checkpoint_every else None
    with interrupt.signals_raise():
        try:
            record = {**base, **train(cfg, progress, checkpoint_every, ckpt, out)}
        except interrupt.Interrupted:
            raise
        except BaseException as exc:  # noqa: BLE001 - a crashing run is a result, the sweep goes on
            record = failed_record(cfg, f"{type(exc).__name__}: {exc}", executor, base)
            record["traceback"] = traceback.format_exc(limit=8)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        store.save(out, record)
    except InvalidRecord as exc:   # a bug in what the run recorded: keep the fault, not a bad record
        record = failed_record(cfg, f"the run's record is not valid: {exc}", executor, base)
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
    fidelity_pass(configs, out)
    return [store.load(out, c.key()) for c in configs]

"""Where runs execute. One small interface, three backends:

- `local`: in this process, one run after another: the only way to get comparable timings;
- `joblib`: N local worker processes (loky), torch's threads pinned to `--threads` in each;
- `slurm`: a submitit job array on a SLURM cluster (or submitit's `local`/`debug` clusters, which
  run the same submission code on this machine, for trying it out and for CI).

Every backend runs `work` on each configuration; `work` writes the run's record itself, atomically,
so what a backend returns is only for the progress bar: the records on disk are the results, and
a run whose record is there and ok is never dispatched again. `work` holds the run's lock
(harness/locks.py) while it trains, so two commands on one output folder never run a run twice.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from . import locks, runner, store
from .config import ConfigError, did_you_mean
from .runner import RunConfig

ROOT = Path(__file__).resolve().parent.parent


def work(cfg: RunConfig, out: Path, options: dict, wait: bool = True) -> dict | None:
    """One run, in whatever process a backend chose, holding the run's lock; a top-level function so
    it pickles. A run another process finished while this one waited for its lock (or any time,
    without `force` in `options`) is not run again: its record is returned. None: the lock is held
    elsewhere and `wait` is False."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    options = dict(options)
    force = options.pop("force", False)
    key = cfg.key()
    before = _mtime(store.record_path(out, key))
    with locks.run_lock(out, key, wait) as waited:
        if waited is None:
            return None
        if waited and _mtime(store.record_path(out, key)) != before:   # the other process ran it
            record = store.load(out, key)
            if record is not None:
                return record
        if not force and store.is_finished(out, key):
            return store.load(out, key)
        return runner.run_config(cfg, out, **options)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def save_unless_running(out: Path, record: dict) -> None:
    """Write the record of a run whose worker died, unless another process is running it now."""
    with locks.run_lock(out, record["hash"], wait=False) as free:
        if free is not None:
            store.save(out, record)


class Executor:
    """Runs a list of configurations and yields each one's record as it finishes."""

    name = "local"
    concurrent = 1  # how many runs may be timed at the same time; > 1: times not comparable

    def run(self, configs: list[RunConfig], out: Path, options: dict) -> Iterator[dict]:
        raise NotImplementedError

    def running(self, remaining: int) -> int:
        """Runs in flight now, for the progress bar."""
        return min(self.concurrent, remaining)

    def describe(self) -> dict:
        return {"name": self.name, "concurrent": self.concurrent}


class Local(Executor):
    def run(self, configs, out, options):
        options = {**options, "executor": self.describe()}
        busy = []   # runs another process holds: do the others first, then wait for these
        for cfg in configs:
            record = work(cfg, out, options, wait=False)
            if record is None:
                busy.append(cfg)
            else:
                yield record
        if busy:
            print(f"waiting for {len(busy)} runs that another process is running in {out}", file=sys.stderr)
        for cfg in busy:
            yield work(cfg, out, options)


class Joblib(Executor):
    """N worker processes (joblib's loky), one future per run. A worker killed from outside (the
    out-of-memory killer, a segfault) breaks the whole pool and fails every run in flight; the runs
    that were in flight are then retried one at a time, so the run that kills its worker even alone
    is recorded `failed` and the sweep goes on in parallel."""

    name = "joblib"
    THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")
    GIVE_UP = 3   # runs that kill their worker alone before any run has finished: the workers cannot work

    def __init__(self, jobs: int, threads: int):
        self.concurrent, self.threads = jobs, threads

    def run(self, configs, out, options):
        options = {**options, "progress": False, "executor": self.describe()}
        pending, suspects, killed, any_finished = list(configs), [], 0, False
        while pending:
            batch = suspects or pending
            workers = 1 if suspects else min(self.concurrent, len(batch))
            finished, broken = yield from self._round(batch, workers, out, options)
            pending = [c for c in pending if id(c) not in finished]
            suspects = [c for c in suspects if id(c) not in finished]
            any_finished = any_finished or bool(finished)
            if broken is None:
                suspects = []
            elif workers == 1:     # alone, the first unfinished run was the one running: it killed its worker
                culprit = next(c for c in batch if id(c) not in finished)
                killed += 1
                if killed == self.GIVE_UP and not any_finished:   # the workers, not the runs: stop, say why
                    raise RuntimeError(f"{killed} runs killed their worker process alone and none finished ({broken})")
                record = runner.failed_record(culprit, f"worker process died ({broken})", self.describe())
                save_unless_running(out, record)
                yield record
                pending = [c for c in pending if c is not culprit]
                suspects = []
            else:                  # loky starts runs in submission order: the first `workers` unfinished were in flight
                suspects = pending[:workers]

    def _round(self, batch, workers, out, options):
        """Submit `batch` to a fresh pool; yield each record as it comes. Returns the ids of the
        finished configurations and, if the pool broke, the reason."""
        from joblib.externals.loky import BrokenProcessPool, ProcessPoolExecutor, as_completed
        finished, broken = set(), None
        pool = ProcessPoolExecutor(max_workers=workers, env={v: str(self.threads) for v in self.THREAD_VARS})
        try:
            futures = {pool.submit(work, cfg, out, options): cfg for cfg in batch}
            for future in as_completed(futures):
                cfg = futures[future]
                try:
                    record = future.result()
                except BrokenProcessPool as exc:
                    record = store.load(out, cfg.key())      # it may have finished just before the break
                    if not (record and record.get("status") == "ok"):
                        broken = broken or _death(exc)
                        continue
                finished.add(id(cfg))
                yield record
        finally:  # Ctrl-C included: no worker is left running unsupervised
            pool.shutdown(wait=False, kill_workers=True)
        return finished, broken


def _death(exc: Exception) -> str:
    """loky's paragraph about a dead worker, cut to its exit codes."""
    codes = re.search(r"exit codes of the workers are (\{.*?\})", str(exc))
    return f"exit codes {codes.group(1)}" if codes else (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Slurm(Executor):
    """A submitit job array: one job per run, at most `array_parallelism` running at a time."""

    name = "slurm"
    CLUSTERS = ("slurm", "local", "debug")

    def __init__(self, cluster: str, params: dict[str, Any], threads: int, poll_s: float = 2.0):
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("--executor slurm: sbatch is not available on this machine; run from a SLURM "
                              "login node (--slurm-cluster local runs the same jobs as local processes)")
        self.cluster, self.poll_s, self.threads = cluster, poll_s, threads
        # submitit's own default time limit is 5 minutes: too short for most runs
        self.params = {"cpus_per_task": threads, "timeout_min": DEFAULT_TIME_MIN, **params}
        if cluster != "debug":  # jobs import harness from this checkout, wherever they start
            self.params[f"{cluster}_setup"] = [f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"]
        self.concurrent = int(self.params.get("slurm_array_parallelism") or 0)
        self.jobs: dict = {}
        check_submitit_params(self.params)

    def describe(self) -> dict:
        return {"name": self.name, "cluster": self.cluster, "concurrent": self.concurrent}

    def _executor(self, out: Path):
        import submitit
        executor = submitit.AutoExecutor(folder=Path(out) / "slurm", cluster=self.cluster)
        executor.update_parameters(name="creditbench", **self.params)
        return executor

    def run(self, configs, out, options):
        if not configs:
            return
        # SLURM limits a job array's running jobs itself; submitit's local cluster would start every
        # job at once, so it is fed at most that many at a time; its debug cluster runs one here
        default = {"slurm": len(configs), "local": max(1, (os.cpu_count() or 1) // self.threads), "debug": 1}
        self.concurrent = min(self.concurrent or default[self.cluster], len(configs))
        out = Path(out).resolve()  # jobs may start in another directory
        options = {**options, "progress": False, "executor": self.describe()}
        executor = self._executor(out)
        queue, pending = list(configs), {}
        self.jobs = pending
        try:
            while queue or pending:
                if self.cluster == "slurm" and queue:
                    jobs = executor.map_array(work, queue, [out] * len(queue), [options] * len(queue))
                    pending.update(zip(jobs, queue))
                    queue = []
                while queue and len(pending) < self.concurrent:
                    cfg = queue.pop(0)
                    pending[executor.submit(work, cfg, out, options)] = cfg
                finished = [j for j in pending if self.cluster == "debug" or j.done()]
                for job in finished:
                    yield self._collect(job, pending.pop(job), out)
                if pending and not finished:
                    time.sleep(self.poll_s)
        except BaseException:  # Ctrl-C: jobs left queued would run unsupervised, and twice on a rerun
            for job in pending:
                job.cancel(check=False)
            raise

    def _collect(self, job, cfg: RunConfig, out: Path) -> dict:
        try:
            return job.result()
        except Exception as exc:  # noqa: BLE001 - the worker died (killed, timed out, out of memory)
            record = store.load(out, cfg.key())
            if record and record.get("status") == "ok":
                return record
            # submitit's message: what happened (state), then where the job's logs are
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            state = next((line for line in lines if "state:" in line), lines[0] if lines else type(exc).__name__)
            logs = next((line for line in lines if "Look at" in line or line.startswith("Error stream")), "")
            record = runner.failed_record(cfg, f"job {job.job_id} died: {state} {logs}".strip(), self.describe())
            save_unless_running(out, record)
            return record

    def running(self, remaining: int) -> int:
        if self.cluster == "debug":
            return min(1, remaining)
        return sum(1 for j in self.jobs if j.state in ("RUNNING", "COMPLETING"))


# --- building an executor from the command line ------------------------------------------------
DEFAULT_TIME_MIN = 240
GENERIC = {"timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node", "tasks_per_node", "name",
           "stderr_to_stdout"}


def slurm_time(text: str) -> int:
    """Minutes from 'MIN', 'H:MM:SS' or 'D-H:MM:SS' (seconds rounded up)."""
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+):(\d\d):(\d\d)\s*|\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"--slurm-time {text!r}: expected minutes, H:MM:SS or D-H:MM:SS")
    days, hours, minutes, seconds, plain = (int(g) if g else 0 for g in m.groups())
    total = plain if m.group(5) else days * 1440 + hours * 60 + minutes + (seconds > 0)
    if total <= 0:
        raise ConfigError(f"--slurm-time {text!r} must be positive")
    return total


def slurm_param(text: str) -> tuple[str, Any]:
    """'mem_gb=16' -> ('mem_gb', 16); 'constraint=volta' -> ('slurm_constraint', 'volta')."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--slurm-param {text!r}: expected key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, (dict, list)) and not value.strip().startswith(("[", "{")):
        parsed = value
    if key not in GENERIC and not key.startswith(("slurm_", "local_", "debug_")):
        key = f"slurm_{key}"
    return key, parsed


def check_submitit_params(params: dict) -> None:
    """Let submitit check names and types now, before anything is submitted."""
    import submitit
    from submitit.slurm.slurm import SlurmExecutor
    with tempfile.TemporaryDirectory() as tmp:
        try:
            submitit.AutoExecutor(folder=tmp, cluster="debug").update_parameters(**params)
        except (NameError, AssertionError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            first = first.split(" Valid arguments")[0]
            bad = re.search(r"slurm_(\w+)", first)
            hint = did_you_mean(bad.group(1), sorted(SlurmExecutor._valid_parameters())) if bad else ""
            raise ConfigError(f"--slurm-param: {first}{hint}") from None


def make(args) -> Executor:
    if args.executor == "local":
        return Local()
    if args.executor == "joblib":
        return Joblib(args.jobs, args.threads)
    params = {"slurm_partition": args.slurm_partition, "slurm_gpus_per_task": args.slurm_gpus_per_task,
              "slurm_array_parallelism": args.slurm_array_parallelism,
              "timeout_min": args.slurm_time}
    for key, value in (args.slurm_param or []):
        params[key] = value
    return Slurm(args.slurm_cluster, {k: v for k, v in params.items() if v is not None}, args.threads)


def dispatch(executor: Executor, configs: list[RunConfig], out: Path, total: int, done: int, options: dict,
             progress: bool = True) -> dict[str, int]:
    """Run `configs` (those not done) with a progress bar over all `total` runs of the sweep."""
    from tqdm.auto import tqdm
    counts = {"ok": 0, "failed": 0, "diverged": 0}
    bar = tqdm(total=total, initial=done, desc=f"runs ({executor.name})", unit="run", disable=not progress)
    remaining = len(configs)

    def show():
        bar.set_postfix_str(f"done {bar.n}, running {executor.running(remaining)}, "
                            f"failed {counts['failed'] + counts['diverged']}, remaining {remaining}", refresh=True)

    show()
    try:
        for record in executor.run(configs, out, {**options, "progress": progress and executor.name == "local"}):
            remaining -= 1
            counts[record.get("status") if record.get("status") in counts else "failed"] += 1
            bar.update()
            show()
    finally:
        bar.close()
    return counts

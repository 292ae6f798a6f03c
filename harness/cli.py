"""The command line: parse (and read a sweep file), validate everything, build the run list, run
what is not done yet with the chosen executor, write the tables."""
from __future__ import annotations

import argparse
import re
import signal
import sys
from pathlib import Path

import torch

from . import executors, report, runner, store, sweepfile, tuning
from .config import ConfigError, parse_spec_list, unknown
from .models import CELLS
from .registry import METHODS, TASKS


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def int_list(text: str) -> list[int]:
    return [positive(t) for t in text.split(",") if t.strip()]


def checked(parse):
    """An argparse type from a function that raises ConfigError."""
    def convert(text):
        try:
            return parse(text)
        except ConfigError as exc:  # argparse names the option: do not name it twice
            raise argparse.ArgumentTypeError(re.sub(r"^--[\w-]+: ", "", str(exc))) from None
    convert.__name__ = parse.__name__
    return convert


def make_parser() -> Parser:
    p = Parser(prog="run_all.py", description="Compare credit-assignment methods for recurrent networks "
               "on long-dependency tasks: learning, time per step, memory, and gradient fidelity.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default=None,
                   help=f"comma-separated methods, each name or name[key=value,...]; a value [v1,v2,...] "
                        f"makes a grid (cartesian product); a file.py or module:Class adds your own. "
                        f"Known: {', '.join(METHODS.names())}")
    p.add_argument("--tasks", default="copy,adding",
                   help=f"comma-separated tasks, each name or name[key=value,...]. Known: {', '.join(TASKS.names())}")
    p.add_argument("--seq-len", type=int_list, default=None,
                   help="horizon T of the training sequences (comma-separated for several); default: each task's own")
    p.add_argument("--eval-seq-len", type=positive, default=None,
                   help="horizon of the test sequences, to measure generalisation to longer ones; default: --seq-len")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder of data files, for the tasks that read one (their option data_dir)")
    p.add_argument("--data-file", type=Path, default=None,
                   help="data file, for the tasks that read one (their option data_file)")
    p.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    p.add_argument("--tau", type=float, default=None,
                   help="time constant of --cell leaky, h' = (1 - 1/tau) h + (1/tau) tanh(...); default "
                        f"{CELLS['leaky'].default_tau:g}")
    p.add_argument("--hidden", type=positive, default=64)
    p.add_argument("--batch", type=positive, default=32)
    p.add_argument("--steps", type=positive, default=1000, help="training steps (batches of whole sequences)")
    p.add_argument("--seeds", type=positive, default=2, help="number of seeds (0..N-1)")
    p.add_argument("--optimizer", choices=sorted(runner.OPTIMIZERS), default="adam")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping; 0 for none")
    p.add_argument("--threads", type=positive, default=1, help="torch threads (timings are compared at a fixed count)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=sorted(runner.DTYPES), default="float32")
    p.add_argument("--eval-every", type=positive, default=None, help="steps between test evaluations; default steps/20")
    p.add_argument("--eval-batches", type=positive, default=4, help="held-out batches per evaluation")
    p.add_argument("--fidelity-points", type=positive, default=3,
                   help="checkpoints where gradient fidelity is measured (step 0 and the end included)")
    p.add_argument("--grad-samples", type=positive, default=16,
                   help="K draws per checkpoint for the bias and variance of stochastic methods")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    g = p.add_argument_group("sweeps")
    g.add_argument("--config", type=Path, default=None,
                   help="sweep file (.yaml or .toml) holding any of these options; the command line overrides it")
    g.add_argument("--dry-run", action="store_true", help="list the runs to execute and those already done; run nothing")
    g.add_argument("--force", action="store_true", help="rerun every selected run, finished or not")
    g.add_argument("--collect", action="store_true",
                   help="only build the tables from the records in --out (those selected, or all without --methods)")
    g.add_argument("--tune", type=checked(tuning.parse_tune), default=None,
                   help=f"e.g. lr=[1e-4,3e-4,1e-3]: run every value, report each method at the value that scores "
                        f"best on the validation stream; tunable: {', '.join(tuning.TUNABLE)}")
    g.add_argument("--checkpoint-every", type=positive, default=None,
                   help="save each run's full training state every N steps under OUT/checkpoints; an "
                        "interrupted run resumes from it with the same result")
    g.add_argument("--executor", choices=["local", "joblib", "slurm"], default="local",
                   help="local: this process, one run after another (comparable timings); joblib: -j worker "
                        "processes; slurm: a submitit job array")
    g.add_argument("-j", "--jobs", type=positive, default=2, help="joblib worker processes")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-time", type=checked(executors.slurm_time), default=None,
                   help=f"time limit per run: minutes, H:MM:SS or D-H:MM:SS; unset: "
                        f"{executors.DEFAULT_TIME_MIN} minutes")
    g.add_argument("--slurm-gpus-per-task", type=positive, default=None)
    g.add_argument("--slurm-array-parallelism", type=positive, default=None,
                   help="most runs of the array running at once; unset: all (submitit's local cluster: one per "
                        "--threads CPUs)")
    g.add_argument("--slurm-param", type=checked(executors.slurm_param), action="append", default=None,
                   metavar="KEY=VALUE", help="any other submitit parameter, repeatable, e.g. mem_gb=16, "
                   "constraint=volta, account=lab (slurm_ is prefixed to names that are not generic)")
    g.add_argument("--slurm-cluster", choices=executors.Slurm.CLUSTERS, default="slurm",
                   help="slurm; or submitit's local (subprocesses here) or debug (in this process) clusters, "
                        "to try a submission without a cluster")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options from the sweep file (--config) are defaults that the command line overrides."""
    pre = Parser(prog="run_all.py", add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    parser = make_parser()
    if known.config is not None:
        parser.set_defaults(**sweepfile.load(known.config, parser))
    return parser.parse_args(argv)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use cpu or auto)")
    return name


# command-line options handed to every task that declares the hyperparameter of the same name
DATA_OPTIONS = {"data_dir": "--data-dir", "data_file": "--data-file"}


def with_data_options(task_cls, given: dict, args) -> dict:
    params = dict(given)
    for key in DATA_OPTIONS:
        value = getattr(args, key, None)
        if value is not None and key in task_cls.hyperparameters and key not in params:
            params[key] = str(value.expanduser().resolve())
    return params


def check_data_options(task_classes, args) -> None:
    for key, flag in DATA_OPTIONS.items():
        if getattr(args, key, None) is not None and not any(key in c.hyperparameters for c in task_classes):
            raise ConfigError(f"{flag} is given but none of the tasks ({', '.join(c.name for c in task_classes)}) "
                              f"takes a {key}")


def typed(cls, owner: str, params: dict) -> dict:
    """The values as the method or task reads them, without those equal to the default, so that
    'tbptt[k=10]' and 'tbptt', or k: 5 in a sweep file and k=5 on the command line, are one run."""
    declared = cls.hyperparameters
    parsed = {}
    for key, value in params.items():
        if key not in declared:
            raise unknown(f"hyperparameter of {owner}", key, list(declared))
        v = declared[key].parse(owner, key, value)
        if v != declared[key].default:
            parsed[key] = v
    return parsed


def build_configs(args) -> list[runner.RunConfig]:
    if not args.methods:
        raise ConfigError("--methods is required (on the command line or in the --config file)")
    methods, tasks = parse_spec_list(args.methods), parse_spec_list(args.tasks)
    device = resolve_device(args.device)
    check_data_options([TASKS.get(t.name) for t in tasks], args)
    method_params = [typed(METHODS.get(m.name), f"method {m.name}", m.params) for m in methods]
    configs = []
    for t in tasks:
        task_cls = TASKS.get(t.name)
        task_params = typed(task_cls, f"task {t.name}", with_data_options(task_cls, t.params, args))
        for T in args.seq_len or [task_cls.default_seq_len]:
            for m, m_params in zip(methods, method_params):
                for seed in range(args.seeds):
                    configs.append(runner.RunConfig(
                        method=m.name, method_params=dict(m_params), task=t.name, task_params=dict(task_params),
                        seq_len=T, eval_seq_len=args.eval_seq_len, cell=args.cell, tau=args.tau, hidden=args.hidden,
                        batch=args.batch, steps=args.steps, optimizer=args.optimizer, lr=args.lr,
                        clip=args.clip or None, seed=seed, device=device, dtype=args.dtype, threads=args.threads,
                        eval_every=args.eval_every, eval_batches=args.eval_batches,
                        fidelity_points=args.fidelity_points, grad_samples=args.grad_samples))
    configs = tuning.expand(configs, args.tune or {})
    seen = set()
    for cfg in configs:  # validate each distinct configuration once, before anything trains
        key = (cfg.method, str(cfg.method_params), cfg.task, str(cfg.task_params), cfg.seq_len, cfg.batch)
        if key not in seen:
            cfg.validate()
            seen.add(key)
    unique = {}
    for cfg in configs:  # a grid may name one run twice (a default written out): run it once
        unique.setdefault(cfg.key(), cfg)
    return list(unique.values())


def describe(cfg: runner.RunConfig) -> str:
    params = ",".join(f"{k}={v}" for k, v in cfg.method_params.items())
    tparams = ",".join(f"{k}={v}" for k, v in cfg.task_params.items())
    tuned = " ".join(f"{k}={getattr(cfg, k)}" for k in tuning.TUNABLE)
    return (f"{cfg.key()}  {cfg.method}{f'[{params}]' if params else ''} {cfg.task}{f'[{tparams}]' if tparams else ''}"
            f" T={cfg.seq_len} seed={cfg.seed} {tuned}")


def dry_run(todo, done) -> None:
    print(f"to run ({len(todo)}):")
    for cfg in todo:
        print(f"  {describe(cfg)}")
    print(f"already done ({len(done)}):")
    for cfg in done:
        print(f"  {describe(cfg)}")


def finish(out: Path, records: list[dict]) -> str:
    """Everything written from records: the tables (and the report). Used after a sweep and by --collect."""
    records = [r for r in records if r]
    chosen, candidates = tuning.select(records)
    if len(candidates):
        store.write_atomic(Path(out) / "tuning.csv", candidates.to_csv(index=False))
    path = report.write(out, chosen)
    return (Path(out) / "summary.md").read_text() + f"\nreport: {path}"


def error(message) -> int:
    print(f"run_all.py: error: {message}", file=sys.stderr)
    return 2


def interrupt(signum, frame):  # SIGTERM (a scheduler, kill) unwinds like Ctrl-C: no partial record
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one-line error (or --help)
        return exc.code
    except ConfigError as exc:  # the sweep file
        return error(exc)
    out = args.out
    try:
        if args.collect and not args.methods:
            configs = None
        else:
            configs = build_configs(args)
        executor = executors.make(args)
        if not (args.dry_run or args.collect):
            runner.check_writable(out)
    except ConfigError as exc:
        return error(exc)

    if args.collect:
        records = store.load_all(out) if configs is None else [store.load(out, c.key()) for c in configs]
        if not any(records):
            return error(f"no records in '{out / 'runs'}' to collect")
        print(finish(out, records))
        print(f"\ntables: {out / 'summary.md'}, summary.csv, summary.tex")
        return 0

    done = [] if args.force else [c for c in configs if store.is_finished(out, c.key())]
    done_keys = {c.key() for c in done}
    todo = [c for c in configs if c.key() not in done_keys]
    if args.dry_run:
        dry_run(todo, done)
        return 0

    previous = signal.signal(signal.SIGTERM, interrupt) if threading_main() else None
    try:
        counts = executors.dispatch(executor, todo, out, len(configs), len(done),
                                    {"checkpoint_every": args.checkpoint_every}, progress=not args.quiet)
    except KeyboardInterrupt:
        finished = sum(store.is_finished(out, c.key()) for c in configs)
        print(f"\ninterrupted: {finished} of {len(configs)} runs are finished and recorded in {out / 'runs'}; "
              f"the same command runs the rest", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the executor itself failed (a cluster refusing jobs): runs are safe
        finished = sum(store.is_finished(out, c.key()) for c in configs)
        message = (str(exc).strip().splitlines() or [""])[0]
        print(f"run_all.py: the {executor.name} executor stopped: {type(exc).__name__}: {message}\n"
              f"{finished} of {len(configs)} runs are finished and recorded in {out / 'runs'}; "
              f"the same command runs the rest", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    records = [store.load(out, c.key()) for c in configs]
    print(finish(out, records))
    print(f"\nrecords: {out / 'runs'}; tables: {out / 'summary.md'}, summary.csv, summary.tex")
    if len(todo) == 0:
        print(f"nothing to run: all {len(configs)} runs were already done (--force reruns them)")
    else:
        print(f"ran {len(todo)} of {len(configs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    failed = [r for r in records if r and r.get("status") != "ok"]
    for r in failed:
        print(f"{r['status']}: {r.get('method_label', r['config']['method'])} on {r['config']['task']} "
              f"seed {r['config']['seed']}: {r.get('error', '')}", file=sys.stderr)
    return 0


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()

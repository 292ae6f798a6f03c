"""The command line: parse (and read a sweep file), validate everything, build the run list, run
what is not done yet with the chosen executor, write the tables.

Exit codes: 0 every selected run has a record that is ok or diverged (divergence is a result);
1 at least one run failed (or has no record), or the tables could not be written; 2 bad input
(nothing was run); 130 interrupted (Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
from pathlib import Path

import torch

from . import executors, interrupt, limits, outdir, report, runner, store, sweepfile, tuning
from .config import ConfigError, check_runs, one_line, parse_float, parse_int, parse_spec_list, unknown
from .models import CELLS
from .registry import METHODS, TASKS

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def positive(text: str, most: int | None = None) -> int:
    try:
        value = parse_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    if most is not None and value > most:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {most}, the most allowed")
    return value


def at_most(most: int):
    def convert(text):
        return positive(text, most)
    convert.__name__ = "positive"
    return convert


def int_list(text: str) -> list[int]:
    items = text.split(",")
    if not text.strip() or any(not t.strip() for t in items):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by commas")
    return [positive(t) for t in items]


def number(text: str, allow_zero: bool = False) -> float:
    """A finite positive number (or >= 0 with `allow_zero`); inf, nan and '1_0' are refused."""
    try:
        value = parse_float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"{text!r} must be {'>= 0' if allow_zero else 'positive'}")
    return value


def nonnegative(text: str) -> float:
    return number(text, allow_zero=True)


def specs(registry, kind: str):
    """An argparse type checking a --methods/--tasks list (names, option keys and values) where it
    is given, so that an error in a sweep file names the file, the line and the key."""
    def convert(text: str) -> str:
        try:
            for spec in parse_spec_list(text):
                typed(registry.get(spec.name), f"{kind} {spec.name}", spec.params)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    convert.__name__ = f"{kind} list"
    return convert


def checked(parse):
    """An argparse type from a function that raises ConfigError."""
    def convert(text):
        try:
            return parse(text)
        except ConfigError as exc:  # argparse names the option: do not name it twice
            raise argparse.ArgumentTypeError(re.sub(r"^--[\w-]+: ", "", str(exc))) from None
    convert.__name__ = parse.__name__
    return convert


# The default suite (no --tasks): a dependency that outlasts truncation but not full or sparse credit,
# at two horizons for the scaling figure; measured to separate bptt/sab from tbptt within 5 minutes
# on 2 cores with `--methods sab,tbptt` (README, "Two commands").
DEFAULT_TASKS = "temporal_order"
DEFAULT_SEQ_LENS = [20, 40]


def make_parser() -> Parser:
    p = Parser(prog="run_all.py", description="Compare credit-assignment methods for recurrent networks "
               "on long-dependency tasks: learning, time per step, memory, and gradient fidelity.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", type=specs(METHODS, "method"), default=None,
                   help=f"comma-separated methods, each name or name[key=value,...]; a value [v1,v2,...] "
                        f"makes a grid (cartesian product); a file.py or module:Class adds your own. "
                        f"Known: {', '.join(METHODS.names())}")
    p.add_argument("--tasks", type=specs(TASKS, "task"), default=None,
                   help=f"comma-separated tasks, each name or name[key=value,...]; default: the default suite, "
                        f"{DEFAULT_TASKS} at T={','.join(map(str, DEFAULT_SEQ_LENS))}. Known: {', '.join(TASKS.names())}")
    p.add_argument("--seq-len", type=int_list, default=None,
                   help="horizon T of the training sequences (comma-separated for several); default: each task's own "
                        "(the default suite's without --tasks)")
    p.add_argument("--eval-seq-len", type=positive, default=None,
                   help="horizon of the test sequences, to measure generalisation to longer ones; default: --seq-len")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder of data files, for the tasks that read one (their option data_dir)")
    p.add_argument("--data-file", type=Path, default=None,
                   help="data file, for the tasks that read one (their option data_file)")
    p.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    p.add_argument("--tau", type=number, default=None,
                   help="time constant of --cell leaky, h' = (1 - 1/tau) h + (1/tau) tanh(...); default "
                        f"{CELLS['leaky'].default_tau:g}")
    p.add_argument("--hidden", type=positive, default=64)
    p.add_argument("--batch", type=positive, default=32)
    p.add_argument("--steps", type=positive, default=600, help="training steps (batches of whole sequences)")
    p.add_argument("--seeds", type=at_most(limits.MAX_SEEDS), default=3,
                   help=f"number of seeds (0..N-1), at most {limits.MAX_SEEDS}; fewer than 3 give no interval "
                        f"and no test")
    p.add_argument("--optimizer", choices=sorted(runner.OPTIMIZERS), default="adam")
    p.add_argument("--lr", type=number, default=1e-2)
    p.add_argument("--clip", type=nonnegative, default=1.0, help="gradient-norm clipping; 0 for none")
    p.add_argument("--threads", type=at_most(1024), default=1,
                   help="torch threads (timings are compared at a fixed count)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=sorted(runner.DTYPES), default="float32")
    p.add_argument("--eval-every", type=positive, default=None, help="steps between test evaluations; default steps/20")
    p.add_argument("--eval-batches", type=positive, default=4, help="held-out batches per evaluation")
    p.add_argument("--fidelity-points", type=at_most(1000), default=3,
                   help="checkpoints where gradient fidelity is measured (step 0 and the end included)")
    p.add_argument("--grad-samples", type=positive, default=16,
                   help="K draws per checkpoint for the bias and variance of stochastic methods")
    p.add_argument("--no-reference", action="store_true",
                   help="do not add the reference runs (bptt, sab_bptt, ...) whose trajectories supply the shared "
                        "parameters of the fidelity columns; runs whose reference is not in the sweep then have "
                        "only their own-parameter figures (_own)")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    g = p.add_argument_group("sweeps")
    g.add_argument("--config", type=Path, default=None,
                   help="sweep file (.yaml or .toml) holding any of these options; the command line overrides it")
    g.add_argument("--dry-run", action="store_true", help="list the runs to execute and those already done; run nothing")
    g.add_argument("--force", action="store_true",
                   help="rerun every selected run, finished or not; also runs what the memory check refuses")
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
    if args.tasks is None:
        args.tasks, args.seq_len = DEFAULT_TASKS, args.seq_len or list(DEFAULT_SEQ_LENS)
    methods, tasks = parse_spec_list(args.methods), parse_spec_list(args.tasks)
    check_runs(len(methods) * len(tasks) * len(args.seq_len or [0]) * args.seeds
               * math.prod(len(v) for v in (args.tune or {}).values()), "the run list")
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
    if not getattr(args, "no_reference", False):
        # the reference trajectories first: the runs that need one then measure at its checkpoints as they end
        configs = references(configs) + configs
    unique = {}
    for cfg in configs:  # a grid may name one run twice (a default written out): run it once
        unique.setdefault(cfg.key(), cfg)
    return list(unique.values())


def references(configs: list[runner.RunConfig]) -> list[runner.RunConfig]:
    """The reference runs (Method.reference(): bptt, sab_bptt, ...) that `configs` need, validated."""
    refs, checked = {}, set()
    for cfg in configs:
        ref = runner.reference_config(cfg)
        key = ref.key()
        if key not in refs:
            what = (ref.method, str(ref.method_params), ref.task, str(ref.task_params), ref.seq_len, ref.batch)
            if what not in checked:
                ref.validate()
                checked.add(what)
            refs[key] = ref
    return list(refs.values())


def describe(cfg: runner.RunConfig, role: str = "") -> str:
    params = ",".join(f"{k}={v}" for k, v in cfg.method_params.items())
    tparams = ",".join(f"{k}={v}" for k, v in cfg.task_params.items())
    tuned = " ".join(f"{k}={getattr(cfg, k)}" for k in tuning.TUNABLE)
    return (f"{cfg.key()}  {cfg.method}{f'[{params}]' if params else ''} {cfg.task}{f'[{tparams}]' if tparams else ''}"
            f" T={cfg.seq_len} seed={cfg.seed} {tuned}{role}")


def dry_run(todo, done, refs: set[str] = frozenset()) -> None:
    """The runs to execute and those already done; reference trajectories marked as such."""
    def role(cfg):
        return "  (reference trajectory)" if cfg.key() in refs else ""
    n = sum(c.key() in refs for c in todo)
    print(f"to run ({len(todo)}):" + (f" {n} of them reference trajectories for the shared-parameter fidelity"
                                      if n else ""))
    for cfg in todo:
        print(f"  {describe(cfg, role(cfg))}")
    print(f"already done ({len(done)}):")
    for cfg in done:
        print(f"  {describe(cfg, role(cfg))}")


def finish(out: Path, records: list[dict], damaged: int = 0) -> str:
    """Everything written from records: the tables (and the report). Used after a sweep and by
    --collect. A write error (disk full, permissions) is an OSError naming the file."""
    records = store.newest([r for r in records if r])   # one record per run, before tuning averages seeds
    chosen, candidates = tuning.select(records)
    if len(candidates):
        store.write_atomic(Path(out) / "tuning.csv", candidates.to_csv(index=False))
    path = report.write(out, chosen, damaged)
    return (Path(out) / "summary.md").read_text() + f"\nreport: {path}"


def error(message) -> int:
    print(f"run_all.py: error: {one_line(str(message))}", file=sys.stderr)
    return EXIT_BAD_INPUT


def write_failed(exc: OSError, out: Path) -> int:
    print(f"run_all.py: error: {report.write_error(exc)}; the records in {out / 'runs'} are kept "
          f"(--collect rebuilds the tables)", file=sys.stderr)
    return EXIT_FAILED


def exit_code(records: list[dict | None]) -> int:
    """0 when every selected run has a record that is ok or diverged, else 1."""
    return EXIT_OK if all(r is not None and r["status"] in ("ok", "diverged") for r in records) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    # a real Ctrl-C or SIGTERM (a scheduler, kill) raises interrupt.Interrupted: it unwinds, leaves no
    # partial record, and stops the sweep; a KeyboardInterrupt raised by method code is that run's fault
    with interrupt.signals_raise((signal.SIGINT, signal.SIGTERM), replace_any=True):
        try:
            return _main(argv)
        except KeyboardInterrupt:   # before or after the sweep (during it, _main says what is done)
            print("\ninterrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
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
        budget = limits.budget(executor)
        if configs and not args.collect and not args.force and budget is not None:
            limits.check_memory(configs, *budget, share=max(1, executor.concurrent))
        if not (args.dry_run or args.collect):
            outdir.check_writable(out, outdir.ALWAYS + (("checkpoints",) if args.checkpoint_every else ())
                                  + (("slurm",) if args.executor == "slurm" else ()))
    except ConfigError as exc:
        return error(exc)
    except interrupt.Interrupted:
        raise
    except (SystemExit, KeyboardInterrupt, Exception) as exc:   # a method's or task's own checks: not an exit,
        # not Ctrl-C, and not a traceback (an out-of-tree method may raise ValueError where ours raise ConfigError)
        return error(f"checking the run list: the code of a method or task raised {type(exc).__name__}: {exc}")

    damaged: list = []
    if args.collect:
        everything = sorted(store.load_all(out, damaged), key=report.run_order)
        records = everything if configs is None else select(everything, configs)
        if not any(records):
            return error(f"no records in '{out / 'runs'}' to collect" if not everything
                         else nothing_matches(args, configs, everything))
        try:
            outdir.check_writable(out, ("figures",))
            text = finish(out, records, len(damaged))
        except ConfigError as exc:
            return error(exc)
        except OSError as exc:
            return write_failed(exc, out)
        print(text)
        print(f"\ntables: {out / 'summary.md'}, summary.csv, summary.tex")
        # the newest record of each run decides, as in the tables (a failure from older code, rerun since, does not)
        return exit_code(store.newest(records))

    done = [] if args.force else [c for c in configs if store.is_finished(out, c.key())]
    done_keys = {c.key() for c in done}
    todo = [c for c in configs if c.key() not in done_keys]
    if args.dry_run:
        refs = set() if args.no_reference else {r.key() for r in references(configs)}
        dry_run(todo, done, refs)
        return EXIT_OK

    try:
        counts = executors.dispatch(executor, todo, out, len(configs), len(done),
                                    {"checkpoint_every": args.checkpoint_every, "force": args.force},
                                    progress=not args.quiet)
    except KeyboardInterrupt:
        finished = sum(store.is_finished(out, c.key()) for c in configs)
        print(f"\ninterrupted: {finished} of {len(configs)} runs are finished and recorded in {out / 'runs'}; "
              f"the same command runs the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the executor itself failed (a cluster refusing jobs): runs are safe
        finished = sum(store.is_finished(out, c.key()) for c in configs)
        message = one_line((str(exc).strip().splitlines() or [""])[0])
        print(f"run_all.py: the {executor.name} executor stopped: {type(exc).__name__}: {message}\n"
              f"{finished} of {len(configs)} runs are finished and recorded in {out / 'runs'}; "
              f"the same command runs the rest", file=sys.stderr)
        return EXIT_FAILED

    try:
        shared = runner.fidelity_pass(configs, out, progress=not args.quiet)
        records = [store.load(out, c.key(), damaged) for c in configs]
        text = finish(out, records, len(damaged))
    except OSError as exc:
        return write_failed(exc, out)
    print(text)
    print(f"\nrecords: {out / 'runs'}; tables: {out / 'summary.md'}, summary.csv, summary.tex")
    if len(todo) == 0:
        print(f"nothing to run: all {len(configs)} runs were already done (--force reruns them)")
    else:
        print(f"ran {len(todo)} of {len(configs)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if shared["measured"]:
        print(f"shared-parameter fidelity measured after the sweep for {shared['measured']} runs whose reference "
              f"trajectory finished after them")
    if shared["waiting"]:
        print(f"{shared['waiting']} runs have no shared-parameter fidelity: their reference trajectory is not "
              f"finished in {out / 'runs'}" + (" (--no-reference)" if args.no_reference else "")
              + "; their own-parameter figures (_own) are in the tables", file=sys.stderr)
    if shared["busy"]:
        print(f"{shared['busy']} runs were being written by another process and were left as they are; the same "
              f"command measures their shared-parameter fidelity", file=sys.stderr)
    failed = [r for r in records if r and r.get("status") != "ok"]
    for r in failed:
        print(f"{r['status']}: {r.get('method_label', r['config']['method'])} on {r['config']['task']} "
              f"seed {r['config']['seed']}: {one_line(r.get('error') or '')}", file=sys.stderr)
    missing = sum(r is None for r in records)
    if missing:
        print(f"{missing} of {len(configs)} runs have no record", file=sys.stderr)
    return exit_code(records)


def select(records: list[dict], configs: list[runner.RunConfig]) -> list[dict]:
    """The records of the selected runs, matched by what the run is (its identity: method name and
    hyperparameters, task, model, training options, seed), not by the code that made it; the tables
    then keep the newest of each."""
    wanted = {store.identity_of(c.identity()) for c in configs}
    return [r for r in records if store.identity(r) in wanted]


def nothing_matches(args, configs: list[runner.RunConfig], records: list[dict]) -> str:
    """Why --collect with a selection found nothing: the selection's values that no record has,
    saying which were filled in by default."""
    parser = make_parser()
    have = [store.identity_dict(r) for r in records]
    wanted = [c.identity() for c in configs]
    flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}
    reasons = []
    for key in wanted[0]:
        values = {json.dumps(w[key], sort_keys=True, default=str) for w in wanted}
        present = {json.dumps(h.get(key), sort_keys=True, default=str) for h in have}
        if values & present:
            continue
        dest = {"method_params": "methods", "method": "methods", "task_params": "tasks", "task": "tasks",
                "seed": "seeds"}.get(key, key)
        given = getattr(args, dest, None)
        default = parser.get_default(dest)
        how = " (the default)" if given == default or (given is None and default is None) else ""
        shown = sorted(values)[:3]
        reasons.append(f"{flags.get(dest, key)}: {key} {', '.join(shown)}{how}, records have "
                       f"{', '.join(sorted(present)[:4])}")
    detail = "; ".join(reasons) if reasons else "no single option differs from every record: a combination does"
    return (f"no record in '{store.runs_dir(args.out)}' matches the selection ({len(records)} records there); {detail}")


"""The command line: parse, validate everything, build the run list, run it, write the tables."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import report, runner, summary
from .config import ConfigError, parse_spec_list
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


def make_parser() -> Parser:
    p = Parser(prog="run_all.py", description="Compare credit-assignment methods for recurrent networks "
               "on long-dependency tasks: learning, time per step, memory, and gradient fidelity.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", required=True,
                   help=f"comma-separated methods, each name or name[key=value,...]; a file.py or "
                        f"module:Class adds your own. Known: {', '.join(METHODS.names())}")
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
    return p


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use cpu or auto)")
    return name


# command-line options handed to every task that declares the hyperparameter of the same name
DATA_OPTIONS = {"data_dir": "--data-dir", "data_file": "--data-file"}


def task_params(task_cls, given: dict, args) -> dict:
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


def build_configs(args) -> list[runner.RunConfig]:
    methods, tasks = parse_spec_list(args.methods), parse_spec_list(args.tasks)
    device = resolve_device(args.device)
    check_data_options([TASKS.get(t.name) for t in tasks], args)
    configs = []
    for t in tasks:
        task_cls = TASKS.get(t.name)
        params = task_params(task_cls, t.params, args)
        for T in args.seq_len or [task_cls.default_seq_len]:
            for m in methods:
                METHODS.get(m.name)
                for seed in range(args.seeds):
                    configs.append(runner.RunConfig(
                        method=m.name, method_params=dict(m.params), task=t.name, task_params=dict(params),
                        seq_len=T, eval_seq_len=args.eval_seq_len, cell=args.cell, hidden=args.hidden,
                        batch=args.batch, steps=args.steps, optimizer=args.optimizer, lr=args.lr,
                        clip=args.clip or None, seed=seed, device=device, dtype=args.dtype, threads=args.threads,
                        eval_every=args.eval_every, eval_batches=args.eval_batches,
                        fidelity_points=args.fidelity_points, grad_samples=args.grad_samples))
    seen = set()
    for cfg in configs:  # validate each distinct configuration once, before anything trains
        key = (cfg.method, str(cfg.method_params), cfg.task, str(cfg.task_params), cfg.seq_len)
        if key not in seen:
            cfg.validate()
            seen.add(key)
    return configs


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one-line error (or --help)
        return exc.code
    try:
        configs = build_configs(args)
        runner.check_writable(args.out)
    except ConfigError as exc:
        print(f"run_all.py: error: {exc}", file=sys.stderr)
        return 2
    records = runner.run_all(configs, args.out, progress=not args.quiet)
    table = summary.write(summary.summarise(records), args.out)
    print(table)
    print(f"\nreport: {report.write(args.out, records)}")
    print(f"\nrecords: {args.out / 'runs'}; tables: {args.out / 'summary.md'}, summary.csv, summary.tex")
    failed = [r for r in records if r and r.get("status") != "ok"]
    for r in failed:
        print(f"{r['status']}: {r.get('method_label', r['config']['method'])} on {r['config']['task']} "
              f"seed {r['config']['seed']}: {r.get('error', '')}", file=sys.stderr)
    return 0

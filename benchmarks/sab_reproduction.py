"""The SAB copy-task reproduction (issue 3): copy at T=100, LSTM of 128 units, batch 64, Adam lr 1e-3,
gradient-norm clip 1.0; tbptt[k=5,update=sequence], tbptt[k=5], sab[k_trunc=5,k_top=5,k_att=2] and
bptt; 3 seeds each; the same budget of training sequences (steps x batch) for every method.

The budget is the largest number of steps that fits --hours, estimated from each method's measured
time per step at this size on this machine (plus --overhead for evaluation and fidelity), unless
--steps is given. The script writes a README into the output folder (command, budget, machine),
then runs `run_all.py` there, one thread per run; with --jobs 2 (both cores of this machine) two runs
share the machine at a time, which buys about 1.7x the budget at the cost of per-step timings some
10-30% slower than alone (measured), so compare time only within one reproduction.

    python benchmarks/sab_reproduction.py --dry-run            # print the budget and the command
    python benchmarks/sab_reproduction.py                      # about two hours here
    python benchmarks/sab_reproduction.py --stabilised         # also sab with store=provisional
    python benchmarks/sab_reproduction.py --steps 3 --out /tmp/sab-check   # a tiny check of the pipeline
"""
import argparse
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.method import RunSpec, Updater  # noqa: E402
from harness.registry import METHODS, TASKS  # noqa: E402
from harness.config import parse_spec_list, split_top_level  # noqa: E402

METHODS_DEFAULT = "tbptt[k=5,update=sequence],tbptt[k=5],sab[k_trunc=5,k_top=5,k_att=2],bptt"
T, HIDDEN, BATCH, LR, CLIP, SEEDS = 100, 128, 64, 1e-3, 1.0, 3


def seconds_per_step(spec_text: str, reps: int = 3) -> float:
    """Median wall-clock of one training step at the reproduction's size, after one warm-up."""
    (spec,) = parse_spec_list(spec_text)
    task, method = TASKS.get("copy")(T), METHODS.get(spec.name)(**spec.params)
    run_spec = RunSpec("lstm", task.input_size, HIDDEN, task.output_size, task.num_steps, BATCH)
    torch.manual_seed(0)
    net = method.build_network(run_spec)
    updater = Updater(net, torch.optim.Adam(net.parameters(), lr=LR), CLIP)
    stream, times = task.stream(0, "train", BATCH), []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        method.train_step(net, next(stream), updater, None)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def command(methods: str, steps: int, out: Path, jobs: int) -> list[str]:
    return [sys.executable, "run_all.py", "--methods", methods, "--tasks", "copy", "--seq-len", str(T),
            "--cell", "lstm", "--hidden", str(HIDDEN), "--batch", str(BATCH), "--optimizer", "adam",
            "--lr", str(LR), "--clip", str(CLIP), "--seeds", str(SEEDS), "--steps", str(steps),
            "--threads", "1", "--device", "cpu", "--out", str(out)] + (
        ["--executor", "joblib", "-j", str(jobs)] if jobs > 1 else [])


README = """# SAB copy-task reproduction: T={T}, LSTM {hidden}, batch {batch}

Issue 3's reproduction: {methods}, {seeds} seeds each, the same budget for every method.

- Command (from the repository root; rerunning skips finished runs and rebuilds the tables):

      {cmd}

- Budget: {steps} training steps of {batch} sequences = {sequences} sequences per run
  ({basis}).
- Machine: {machine}; torch {torch}; one thread per run, {jobs} run(s) at a time.
- Started: {started}.

Results: `summary.md` (and `.csv`, `.tex`), one record per run in `runs/` (learning curve against
sequences, updates and wall-clock; status ok / diverged / failed).

## What happened

(to be written after the run: converged or not, plateau exits, collapses or divergence per seed)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=METHODS_DEFAULT)
    p.add_argument("--stabilised", action="store_true",
                   help="also run sab with store=provisional (the stabiliser the paper does not name)")
    p.add_argument("--hours", type=float, default=2.0, help="wall-clock to fill when --steps is not given")
    p.add_argument("--overhead", type=float, default=0.15, help="fraction added for evaluation and fidelity")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time (joblib workers, one thread each); 2 uses both cores here")
    p.add_argument("--contention", type=float, default=1.0,
                   help="slowdown of a step when --jobs runs share the machine (the 3000-step run here: none, "
                        "its 12 runs two at a time took 83 min against 80 min estimated from solo steps)")
    p.add_argument("--steps", type=int, default=None, help="fixed budget of training steps per run")
    p.add_argument("--out", type=Path, default=Path("results/reference/sab-copy-T100"),
                   help="output folder (relative paths are from the repository root)")
    p.add_argument("--dry-run", action="store_true", help="print the budget and the command, run nothing")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.stabilised:
        args.methods += ",sab[k_trunc=5,k_top=5,k_att=2,store=provisional]"

    if args.steps:
        steps, basis = args.steps, "fixed with --steps"
    else:
        per = {m: seconds_per_step(m) for m in split_top_level(args.methods)}
        for m, s in per.items():
            print(f"{m}: {s:.3f} s/step", flush=True)
        slowdown = args.contention if args.jobs > 1 else 1.0
        per_seed_step = sum(per.values()) * SEEDS * (1 + args.overhead) * slowdown / args.jobs
        steps = max(1, int(args.hours * 3600 / per_seed_step))
        basis = (f"the most that fits {args.hours:g} h from measured s/step "
                 + ", ".join(f"{m} {s:.3f}" for m, s in per.items()) + f", plus {args.overhead:.0%} overhead"
                 + (f", x{slowdown:g} for {args.jobs} runs at a time" if args.jobs > 1 else ""))
    cmd = command(args.methods, steps, args.out, args.jobs)
    shown = " ".join(shlex.quote(c) for c in ["python"] + cmd[1:])
    print(f"budget: {steps} steps x {BATCH} = {steps * BATCH} sequences per run ({basis})\n{shown}", flush=True)
    if args.dry_run:
        return 0
    out = args.out if args.out.is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(README.format(
        T=T, hidden=HIDDEN, batch=BATCH, methods=", ".join(f"`{m}`" for m in split_top_level(args.methods)), seeds=SEEDS,
        cmd=shown, steps=steps, jobs=args.jobs, sequences=steps * BATCH, basis=basis, torch=torch.__version__,
        machine=f"{platform.processor() or platform.machine()}, {platform.platform()}, {torch.get_num_interop_threads()} "
                f"interop threads, {__import__('os').cpu_count()} CPUs",
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())

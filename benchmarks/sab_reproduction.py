"""SAB reproductions (issue 17), each one folder under results/reference/ written as a report.

`--part paper`: the paper's protocol on copy T=100 (Ke et al. 2018, and the release's defaults):
LSTM 128, batch 64, Adam lr 1e-3, gradient-norm clip 1.0, loss on every position; bptt,
tbptt[k=5] in both forms (an update per window, and `update=sequence`: detach every 5 steps inside
one graph, one update per sequence, the release's baseline), sab[k_trunc=5] (the paper's default:
mlp scorer, k_top=5, k_att=2), sab_bptt (the same network by full BPTT: separates what sparse
backtracking does from what the attention's forward skip connections do), and
sab[k_trunc=5,variant=released] on copy[encoding=scalar] (the release feeds the symbol id as one
scalar, input size 1); 3 seeds; evaluated afterwards at T=200 and T=300 from each run's final
parameters (the paper's transfer claim).

`--part converging`: a long-dependency regime where the methods converge within the same budget
(denoise T=40, k_trunc=10: the horizon is 4 x k_trunc; LSTM 64, batch 32, Adam lr 1e-2, found by
the pilots in the README), so that SAB ~ BPTT > TBPTT at equal truncation and the transfer to
longer sequences (T=80, T=160) are tested at final performance; with sab[store=provisional] (the
stabiliser of the exploding exact gradient) beside the paper's default, to measure its effect.

The budget is the largest number of steps that fits --hours with --jobs runs at a time, estimated
from each run's measured time per step at its size on this machine (the reference runs the sweep
adds for fidelity included: sab_bptt[variant=released] for the released variant), plus --overhead
for evaluation, fidelity and diagnostics, unless --steps is given. The script writes a README into
the folder (command, budget, machine), runs `run_all.py` once per task there, rebuilds the tables
from all the folder's records, and evaluates the longer horizons (benchmarks/sab_generalisation.py).

    python benchmarks/sab_reproduction.py --part paper --dry-run      # print the budget and the commands
    python benchmarks/sab_reproduction.py --part paper --jobs 2       # about two hours here
    python benchmarks/sab_reproduction.py --part converging --jobs 2
    python benchmarks/sab_reproduction.py --part paper --steps 3 --out /tmp/sab-check   # a tiny check of the pipeline
"""
import argparse
import os
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

from harness.config import parse_spec_list, split_top_level  # noqa: E402
from harness.method import RunSpec, Updater  # noqa: E402
from harness.registry import METHODS, TASKS  # noqa: E402

RELEASE_UPDATES = 20 * 10_000   # the release's default: 20 epochs of 10,000 batches of 64 (n_train = 640,000)

PARTS = {
    "paper": {
        "T": 100, "hidden": 128, "batch": 64, "lr": 1e-3, "clip": 1.0, "seeds": 3, "horizons": [200, 300],
        "groups": [("copy", "bptt,tbptt[k=5],tbptt[k=5,update=sequence],sab[k_trunc=5],sab_bptt"),
                   ("copy[encoding=scalar]", "sab[k_trunc=5,variant=released]")],
        "out": "results/reference/sab-paper-copy-T100",
        "claim": "SAB with k_trunc=5 learns the copy task at T=100 about as well as full BPTT (near-perfect "
                 "accuracy), far better than truncated BPTT with the same truncation, and transfers to T=200 "
                 "and T=300 (Ke et al. 2018, Table 1 and section 5).",
    },
    "converging": {
        "T": 40, "hidden": 64, "batch": 32, "lr": 1e-2, "clip": 1.0, "seeds": 3, "horizons": [80, 160],
        "groups": [("denoise", "bptt,tbptt[k=10],tbptt[k=10,update=sequence],sab[k_trunc=10],sab_bptt,"
                               "sab[k_trunc=10,store=provisional]")],
        "out": "results/reference/sab-converging-denoise-T40",
        "claim": "At equal truncation SAB learns a dependency four windows long about as well as full BPTT and "
                 "better than truncated BPTT, and transfers to longer sequences (Ke et al. 2018, section 5).",
    },
}


def implied(groups) -> list[tuple[str, str]]:
    """Every (task, method spec) the sweep runs: the listed ones and the references the fidelity pass
    adds (Method.reference(): sab_bptt with the run's parameters minus k_trunc) when not listed."""
    runs = []
    for task, methods in groups:
        listed = {METHODS.get(s.name)(**s.params).label for s in parse_spec_list(methods)}
        runs += [(task, m) for m in split_top_level(methods)]
        for s in parse_spec_list(methods):
            name, params = METHODS.get(s.name)(**s.params).reference()
            ref = METHODS.get(name)(**params)
            if ref.label not in listed:
                listed.add(ref.label)
                runs.append((task, ref.label))
    return runs


def seconds_per_step(task_text: str, spec_text: str, part: dict, reps: int = 3) -> float:
    """Median wall-clock of one training step at the part's size, after one warm-up."""
    (spec,), (tspec,) = parse_spec_list(spec_text), parse_spec_list(task_text)
    task, method = TASKS.get(tspec.name)(part["T"], **tspec.params), METHODS.get(spec.name)(**spec.params)
    run_spec = RunSpec("lstm", task.input_size, part["hidden"], task.output_size, task.num_steps, part["batch"])
    torch.manual_seed(0)
    net = method.build_network(run_spec)
    updater = Updater(net, torch.optim.Adam(net.parameters(), lr=part["lr"]), part["clip"])
    stream, times = task.stream(0, "train", part["batch"]), []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        method.train_step(net, next(stream), updater, None)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def command(part: dict, task: str, methods: str, steps: int, out: Path, jobs: int) -> list[str]:
    return [sys.executable, "run_all.py", "--methods", methods, "--tasks", task, "--seq-len", str(part["T"]),
            "--cell", "lstm", "--hidden", str(part["hidden"]), "--batch", str(part["batch"]), "--optimizer", "adam",
            "--lr", str(part["lr"]), "--clip", str(part["clip"]), "--seeds", str(part["seeds"]), "--steps", str(steps),
            "--threads", "1", "--device", "cpu", "--quiet", "--out", str(out)] + (
        ["--executor", "joblib", "-j", str(jobs)] if jobs > 1 else [])


def shown(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in ["python"] + cmd[1:])


README = """# SAB reproduction, part "{name}": {title}

Claim tested: {claim}

- Commands (from the repository root; rerunning with the code that made the records skips finished runs and rebuilds the tables; a run's key includes a hash of its code, so with later code the runs are made again):

{cmds}

- Budget: {steps} training steps of {batch} sequences = {sequences} sequences per run ({basis}){release}.
- Machine: {machine}; torch {torch}; one thread per run, {jobs} run(s) at a time.
- Started: {started}.

Results: `summary.md` (and `.csv`, `.tex`, `report.md`), one record per run in `runs/` (learning
curve against sequences, updates and wall-clock, with SAB's diagnostics at every evaluation: exact
gradient norm through its network, attention entropy, memories read, top-score spread, stored-state
norms), `generalisation.md` (final parameters evaluated at {horizons}).

## Outcome

(to be written after the run: what was and was not reproduced, per seed; deviations)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=sorted(PARTS), required=True)
    p.add_argument("--hours", type=float, default=2.0, help="wall-clock to fill when --steps is not given")
    p.add_argument("--overhead", type=float, default=0.15,
                   help="fraction added for evaluation, fidelity, diagnostics and the longer-horizon pass")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (joblib workers, one thread each); 2 uses both cores here")
    p.add_argument("--contention", type=float, default=1.0,
                   help="slowdown of a step when --jobs runs share the machine (the 3000-step copy run here: none, its "
                        "12 runs two at a time took 83 min against 80 min estimated from solo steps)")
    p.add_argument("--steps", type=int, default=None, help="fixed budget of training steps per run")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the part's folder under results/reference)")
    p.add_argument("--dry-run", action="store_true", help="print the budget and the commands, run nothing")
    p.add_argument("--literal", action="store_true",
                   help="part paper: also sab[k_trunc=5,variant=released_literal] on scalar input (the release's "
                        "threshold as PyTorch 0.1.12 probably computed it)")
    args = p.parse_args()
    torch.set_num_threads(1)
    part = dict(PARTS[args.part])
    if args.literal and args.part == "paper":
        part["groups"] = [(t, m + (",sab[k_trunc=5,variant=released_literal]" if t == "copy[encoding=scalar]" else ""))
                          for t, m in part["groups"]]
    out = args.out or Path(part["out"])
    runs = implied(part["groups"])

    if args.steps:
        steps, basis = args.steps, "fixed with --steps"
    else:
        per = {(t, m): seconds_per_step(t, m, part) for t, m in runs}
        for (t, m), s in per.items():
            print(f"{m} on {t}: {s:.3f} s/step", flush=True)
        slowdown = args.contention if args.jobs > 1 else 1.0
        per_seed_step = sum(per.values()) * part["seeds"] * (1 + args.overhead) * slowdown / args.jobs
        steps = max(1, int(args.hours * 3600 / per_seed_step))
        basis = (f"the most that fits {args.hours:g} h from measured s/step "
                 + ", ".join(f"{m} on {t} {s:.3f}" for (t, m), s in per.items())
                 + f", plus {args.overhead:.0%} overhead" + (f", x{slowdown:g} for {args.jobs} runs at a time" if args.jobs > 1 else ""))
    cmds = [command(part, task, methods, steps, out, args.jobs) for task, methods in part["groups"]]
    collect = [sys.executable, "run_all.py", "--collect", "--out", str(out)]
    general = [sys.executable, "benchmarks/sab_generalisation.py", str(out), "--horizons", ",".join(map(str, part["horizons"]))]
    print(f"budget: {steps} steps x {part['batch']} = {steps * part['batch']} sequences per run ({basis})", flush=True)
    for c in cmds + [collect, general]:
        print(shown(c), flush=True)
    if args.dry_run:
        return 0
    folder = out if out.is_absolute() else ROOT / out
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(README.format(
        name=args.part, title=", ".join(f"{t} T={part['T']}" for t, _ in part["groups"][:1]) + f", LSTM {part['hidden']}, "
        f"batch {part['batch']}", claim=part["claim"],
        cmds="\n".join(f"      {shown(c)}" for c in cmds + [collect, general]), steps=steps, batch=part["batch"],
        sequences=steps * part["batch"], basis=basis, jobs=args.jobs, torch=torch.__version__,
        release=(f"; {steps / RELEASE_UPDATES:.1%} of the release's default of {RELEASE_UPDATES:,} updates"
                 if args.part == "paper" else ""),
        horizons=", ".join(f"T={h}" for h in part["horizons"]),
        machine=f"{platform.processor() or platform.machine()}, {platform.platform()}, {os.cpu_count()} CPUs",
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
    for c in cmds:
        code = subprocess.run(c, cwd=ROOT).returncode
        if code not in (0, 1):   # 1: some run failed (recorded); anything else: stop
            return code
    subprocess.run(collect, cwd=ROOT)
    return subprocess.run(general, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())

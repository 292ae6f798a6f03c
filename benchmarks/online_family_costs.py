"""Cost per time step of snap1, eprop and rflo against bptt on the same cell, measured in one run.

Per cell (rnn, leaky, lstm, gru; rflo on the leaky cell only), hidden 128, batch 32, one thread: the
methods' training steps are timed in interleaved rounds (bptt, snap1, eprop, rflo, bptt, ...), so the
load of a shared machine hits them alike, after a warm-up step; each method's time relative to bptt is
the median over rounds of its time over bptt's in the same round. Also state bytes (the carried
influence) and saved bytes (peak held by autograd during the step), and the floor of carrying
snap1's influence at all: one elementwise pass per time step that reads and writes a buffer of its
size, timed in the same rounds. Targets (issue 18): snap1 <= 3x, eprop <= 2x, rflo <= 2x bptt per step.

Writes results/reference/online_family_costs.{csv,md} (or --out). Timings are only comparable within one run.

    python benchmarks/online_family_costs.py                 # adding T=20 (loss at the last step)
    python benchmarks/online_family_costs.py --task copy     # loss at every step (credit every step)
    python benchmarks/online_family_costs.py --quick         # smoke run: hidden 32, 3 rounds
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.meters import SavedBytesMeter  # noqa: E402
from harness.method import RunSpec, Updater  # noqa: E402
from harness.registry import METHODS, TASKS  # noqa: E402
from harness.task import stream_seed  # noqa: E402

CELLS = ["rnn", "leaky", "lstm", "gru"]
TARGETS = {"snap1": 3.0, "eprop": 2.0, "rflo": 2.0}


def cost_rows(task, cell, hidden, batch, rounds):
    data = next(task.stream(0, "train", batch))
    L, runs, rows = task.num_steps, {}, {}
    names = ["bptt", "snap1", "eprop"] + (["rflo"] if cell == "leaky" else [])
    for name in names:
        method = METHODS.get(name)()
        spec = RunSpec(cell, task.input_size, hidden, task.output_size, L, batch)
        method.check(spec)
        torch.manual_seed(stream_seed(0, "init"))
        net = method.build_network(spec)
        updater = Updater(net, torch.optim.SGD(net.parameters(), lr=1e-3), clip=None)
        rng = torch.Generator().manual_seed(stream_seed(0, "method"))
        meter = SavedBytesMeter(list(net.parameters()) + data.tensors())
        with meter.measure():   # also the warm-up step
            method.train_step(net, data, updater, rng)
        runs[name] = lambda m=method, n=net, u=updater, r=rng: m.train_step(n, data, u, r)
        rows[name] = {"cell": cell, "method": name, "hidden": hidden, "batch": batch,
                      "state_bytes": method.state_bytes(), "saved_bytes": meter.peak}
    # The floor of any method that stores snap1's influence: one elementwise pass per time step that
    # reads it and writes it (M <- a * M, a per row), timed in the same rounds as the methods
    floor_in = torch.randn(batch, rows["snap1"]["state_bytes"] // 4 // batch)
    floor_out, scale = torch.empty_like(floor_in), torch.rand(batch, 1)

    def floor_pass():
        for _ in range(L):
            torch.mul(floor_in, scale, out=floor_out)

    runs["floor"] = floor_pass
    times = {name: [] for name in names + ["floor"]}
    for _ in range(rounds):
        for name in names + ["floor"]:
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    for name, r in rows.items():
        r["ms_per_time_step"] = 1e3 * statistics.median(times[name]) / L
        r["time_vs_bptt"] = statistics.median(t / b for t, b in zip(times[name], times["bptt"]))
        r["rounds"] = rounds
    rows["snap1"]["floor_ms_per_time_step"] = 1e3 * statistics.median(times["floor"]) / L
    rows["snap1"]["floor_vs_bptt"] = statistics.median(t / b for t, b in zip(times["floor"], times["bptt"]))
    return [rows[name] for name in names]


def targets(df) -> str:
    lines = []
    for name, limit in TARGETS.items():
        for _, r in df[df.method == name].iterrows():
            lines.append(f"- {name} on {r.cell}: {r.time_vs_bptt:.2f}x bptt per step (target <= {limit:g}x): "
                         f"{'met' if r.time_vs_bptt <= limit else 'missed'}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: hidden 32, 3 rounds")
    p.add_argument("--task", default="adding", help="task (adding: loss at the last step; copy: at every step)")
    p.add_argument("--seq-len", type=int, default=20, help="task horizon T")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    hidden, rounds = (32, 3) if args.quick else (args.hidden, args.rounds)
    task = TASKS.get(args.task)(args.seq_len)
    load_before = os.getloadavg()
    start = time.perf_counter()
    df = pd.DataFrame([r for cell in args.cells.split(",") for r in cost_rows(task, cell, hidden, args.batch, rounds)])
    env = (f"torch {torch.__version__}, 1 thread, {platform.processor() or platform.machine()}, {os.cpu_count()} "
           f"cores; load average {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
           f"{time.perf_counter() - start:.0f} s in all; {args.task} T={args.seq_len} (L={task.num_steps}), "
           f"hidden {hidden}, batch {args.batch}, float32")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "online_family_costs" + ("_quick" if args.quick else "") + ("" if args.task == "adding" else f"_{args.task}")
    df.to_csv(args.out / f"{stem}.csv", index=False)
    cmd = "python benchmarks/online_family_costs.py" + " ".join([""] + (argv if argv is not None else sys.argv[1:]))
    md = (f"# snap1, eprop, rflo: cost per time step against bptt\n\n`{cmd}`; {env}.\n\n"
          + tabulate(df, headers="keys", tablefmt="github", showindex=False, floatfmt=".4g")
          + "\n\n`floor_ms_per_time_step`: one elementwise pass per time step that reads and writes a buffer the "
          "size of snap1's influence (its state bytes), the least any method that carries it must do; "
          "`floor_vs_bptt`: that pass against bptt's step, in the same rounds."
          + "\n\n## Targets (ratios from this run)\n\n" + targets(df) + "\n")
    (args.out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

"""Cost and gradient quality of the online methods against BPTT, measured in one run.

Per hidden size (32, 64, 128) and batch (1, 32), on the tanh RNN and the adding task:
- time per time step of one training step (median over interleaved rounds, after a warm-up), for
  bptt, rtrl, uoro and kf_rtrl on the same network and batch, and its ratio to bptt's (median over
  rounds of the ratio within a round, so the load of a shared machine hits both alike); for rtrl also the time of
  its one matrix product per step alone (the floor its structured path can reach on this machine);
- state bytes (the method's carried state) and saved bytes (peak held by autograd during the step);
- relative bias (debiased, with bootstrap standard error), relative variance and mean per-sample
  cosine of uoro and kf_rtrl over K draws at fixed parameters, on the same network and a batch of the
  same size (DESIGN.md's definitions, computed by harness.fidelity.measure).

Writes results/reference/online_costs.{csv,md} (or --out). Timings are only comparable within one run.

    python benchmarks/online_costs.py            # full (a few minutes on 2 cores)
    python benchmarks/online_costs.py --quick    # smoke run, small sizes and K
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

from harness import fidelity  # noqa: E402
from harness.meters import SavedBytesMeter  # noqa: E402
from harness.method import RunSpec, Updater  # noqa: E402
from harness.registry import METHODS, TASKS  # noqa: E402
from harness.task import stream_seed  # noqa: E402

METHOD_NAMES = ["bptt", "rtrl", "uoro", "kf_rtrl"]
STOCHASTIC = ["uoro", "kf_rtrl"]


def network(method, task, hidden, batch):
    spec = RunSpec("rnn", task.input_size, hidden, task.output_size, task.num_steps, batch)
    method.check(spec)
    torch.manual_seed(stream_seed(0, "init"))
    return method.build_network(spec)


def cost_rows(task, hidden, batch, rounds, budget_s=30.0):
    """Time every method in interleaved rounds (bptt, rtrl, uoro, kf_rtrl, bptt, ...), so that the
    load of a shared machine hits them alike; each method's time relative to bptt is the median
    over rounds of its time over bptt's in the same round. A method whose calls have used up
    `budget_s` is not timed again (rtrl at hidden 128, batch 32)."""
    data = next(task.stream(0, "train", batch))
    L, runs, rows, methods = task.num_steps, {}, {}, {}
    for name in METHOD_NAMES:
        method = METHODS.get(name)()
        net = network(method, task, hidden, batch)
        updater = Updater(net, torch.optim.SGD(net.parameters(), lr=1e-3), clip=None)
        rng = torch.Generator().manual_seed(stream_seed(0, "method"))
        meter = SavedBytesMeter(list(net.parameters()) + data.tensors())
        with meter.measure():   # also the warm-up step
            method.train_step(net, data, updater, rng)
        methods[name] = method
        runs[name] = lambda m=method, n=net, u=updater, r=rng: m.train_step(n, data, u, r)
        rows[name] = {"method": name, "hidden": hidden, "batch": batch, "state_bytes": method.state_bytes(),
                      "saved_bytes": meter.peak}
    times = {name: [] for name in METHOD_NAMES}
    for _ in range(rounds):
        for name in METHOD_NAMES:
            if times[name] and sum(times[name]) > budget_s:
                continue
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    # rtrl's matrix product per step alone, in the blocked shape its structured path uses (M [B, n, H, kc, V])
    B_, n, H_, kc, V = methods["rtrl"].M.shape
    W, M = torch.randn(H_, H_), torch.randn(B_, n, H_, kc * V)
    out = torch.empty_like(M)
    gemm = []
    for _ in range(min(rounds, len(times["rtrl"]))):
        t0 = time.perf_counter()
        for b in range(B_):
            torch.bmm(W.expand(n, H_, H_), M[b], out=out[b])
        gemm.append(time.perf_counter() - t0)
    rows["rtrl"]["gemm_floor_ms_per_step"] = 1e3 * statistics.median(gemm)
    for name, r in rows.items():
        r["ms_per_step"] = 1e3 * statistics.median(times[name]) / L
        r["time_vs_bptt"] = statistics.median(t / b for t, b in zip(times[name], times["bptt"]))
        r["rounds"] = len(times[name])
    return [rows[name] for name in METHOD_NAMES]


def fidelity_rows(task, hidden, batch, K):
    data = next(task.stream(0, "fidelity", batch))
    rows = []
    for name in STOCHASTIC:
        method = METHODS.get(name)()
        net = network(method, task, hidden, batch)
        t0 = time.perf_counter()
        f = fidelity.measure(method, net, data, seed=0, samples=K)
        rows.append({"method": name, "hidden": hidden, "batch": batch, "K": K, "rel_bias": f["rel_bias"],
                     "rel_bias_se": f["rel_bias_se"], "bias_detected": f["bias_detected"],
                     "rel_variance": f["rel_variance"], "mean_cosine": f["cosine"],
                     "mean_cosine_recurrent": f["cosine_recurrent"], "seconds": time.perf_counter() - t0})
    return rows


def targets(cost_df) -> str:
    lines = []
    uoro = cost_df[cost_df.method == "uoro"]
    worst = uoro.loc[uoro.time_vs_bptt.idxmax()]
    lines.append(f"- uoro within 3x bptt per step: worst {worst.time_vs_bptt:.2f}x (hidden {worst.hidden}, batch "
                 f"{worst.batch}): {'met' if worst.time_vs_bptt <= 3 else 'missed'}")
    r = cost_df[(cost_df.method == "rtrl") & (cost_df.hidden == 128) & (cost_df.batch == 1)]
    if len(r):
        r = r.iloc[0]
        lines.append(f"- rtrl at hidden 128, batch 1 under 7 ms per step: {r.ms_per_step:.1f} ms "
                     f"({'met' if r.ms_per_step < 7 else 'missed'}); its matrix product alone takes "
                     f"{r.gemm_floor_ms_per_step:.1f} ms here ({r.ms_per_step / r.gemm_floor_ms_per_step:.2f}x)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: hidden 32, batch 1 and 4, K=50")
    p.add_argument("--seq-len", type=int, default=20, help="adding-task horizon T (L = T steps)")
    p.add_argument("--samples", type=int, default=None, help="K draws for bias and variance (default 1000)")
    p.add_argument("--fidelity-batches", type=str, default="1", help="batch sizes of the bias/variance part")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "reference")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    hiddens, batches = ([32], [1, 4]) if args.quick else ([32, 64, 128], [1, 32])
    K = args.samples or (50 if args.quick else 1000)
    rounds = 3 if args.quick else 7
    task = TASKS.get("adding")(args.seq_len)
    load_before = os.getloadavg()
    start = time.perf_counter()

    costs = [r for h in hiddens for b in batches for r in cost_rows(task, h, b, rounds)]
    fid = [r for h in hiddens for b in map(int, args.fidelity_batches.split(","))
           for r in fidelity_rows(task, h, b, K)]

    env = (f"torch {torch.__version__}, 1 thread, {platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores; load average {load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at "
           f"end; {time.perf_counter() - start:.0f} s in all; adding task T={args.seq_len}, tanh RNN, float32")
    cost_df, fid_df = pd.DataFrame(costs), pd.DataFrame(fid)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    merged = pd.concat([cost_df.assign(part="cost"), fid_df.assign(part="fidelity")], ignore_index=True)
    merged.to_csv(args.out / f"online_costs{suffix}.csv", index=False)
    cmd = "python benchmarks/online_costs.py" + (" --quick" if args.quick else "")
    md = (f"# Online methods: cost per time step and stochastic-gradient quality\n\n`{cmd}`; {env}.\n\n"
          "## Time and memory per time step (one training step over the sequence, divided by L)\n\n"
          + tabulate(cost_df.rename(columns=lambda c: c.replace("ms_per_step", "ms_per_time_step")), headers="keys",
                     tablefmt="github", showindex=False, floatfmt=".4g")
          + "\n\n`gemm_floor_ms_per_time_step`: rtrl's matrix product per step (H x H by H x (H V) per lane, in its blocked shape) timed alone in this run.\n\n"
          f"## Bias and variance over K={K} draws at fixed parameters (initialisation)\n\n"
          + tabulate(fid_df, headers="keys", tablefmt="github", showindex=False, floatfmt=".4g") + "\n")
    md += "\n## Targets (ratios from this run)\n\n" + targets(cost_df) + "\n"
    (args.out / f"online_costs{suffix}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

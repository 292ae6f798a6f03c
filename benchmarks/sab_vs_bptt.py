"""Time per training step and saved-for-backward bytes of SAB against full BPTT, measured in one run.

Three rows per horizon: `bptt` on the plain LSTM, `sab_bptt` (full BPTT through the SAB network),
and `sab`; ratios are to `bptt` and to `sab_bptt`. One training step = one batch of whole copy
sequences (L = T + 20) with its parameter update; median over --reps steps after one warm-up step,
the methods' steps interleaved so that the machine's changing load falls on all of them alike.

    python benchmarks/sab_vs_bptt.py                       # T = 100, 200, 500, 1000
    python benchmarks/sab_vs_bptt.py --seq-len 1000 --reps 5
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.meters import SavedBytesMeter  # noqa: E402
from harness.method import RunSpec, Updater  # noqa: E402
from harness.registry import METHODS, TASKS  # noqa: E402


def prepare(method_name: str, params: dict, T: int, args):
    """Build the method's network and optimizer; one warm-up step, measured for saved bytes."""
    task = TASKS.get("copy")(T)
    method = METHODS.get(method_name)(**params)
    spec = RunSpec(args.cell, task.input_size, args.hidden, task.output_size, task.num_steps, args.batch)
    torch.manual_seed(0)
    net = method.build_network(spec)
    updater = Updater(net, torch.optim.Adam(net.parameters(), lr=1e-3), clip=1.0)
    stream = task.stream(0, "train", args.batch)
    batch = next(stream)
    meter = SavedBytesMeter(list(net.parameters()) + batch.tensors())
    with meter.measure():
        method.train_step(net, batch, updater, None)
    return {"step": lambda: method.train_step(net, next(stream), updater, None), "times": [],
            "saved": meter.peak, "state": method.state_bytes()}


def measure_interleaved(runs: dict, reps: int) -> None:
    """Time one step of each method in turn, reps times: the machine's load drifts, and
    interleaving puts every method's steps under the same drift."""
    for _ in range(reps):
        for r in runs.values():
            t0 = time.perf_counter()
            r["step"]()
            r["times"].append(time.perf_counter() - t0)
    for r in runs.values():
        r["ms"] = 1e3 * statistics.median(r["times"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=lambda s: [int(v) for v in s.split(",")], default=[100, 200, 500, 1000])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--k-trunc", type=int, default=10)
    p.add_argument("--k-top", type=int, default=5)
    p.add_argument("--k-att", type=int, default=10)
    p.add_argument("--variant", default="paper")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    att = {"k_top": args.k_top, "k_att": args.k_att, "variant": args.variant}
    rows = []
    for T in args.seq_len:
        runs = {"bptt": prepare("bptt", {}, T, args), "sab_bptt": prepare("sab_bptt", att, T, args),
                "sab": prepare("sab", {"k_trunc": args.k_trunc, **att}, T, args)}
        measure_interleaved(runs, args.reps)
        bptt, sab_bptt, sab = runs["bptt"], runs["sab_bptt"], runs["sab"]
        for name, r in (("bptt", bptt), ("sab_bptt", sab_bptt), ("sab", sab)):
            rows.append({"T": T, "L": T + 20, "method": name, "ms/step": f"{r['ms']:.0f}",
                         "x bptt": f"{r['ms'] / bptt['ms']:.2f}", "x sab_bptt": f"{r['ms'] / sab_bptt['ms']:.2f}",
                         "saved MiB": f"{r['saved'] / 2**20:.1f}", "saved x bptt": f"{r['saved'] / bptt['saved']:.2f}",
                         "state KiB": f"{r['state'] / 2**10:.0f}"})
        print(tabulate(rows[-3:], headers="keys", tablefmt="github"), flush=True)
    print(f"\n{args.cell}-{args.hidden}, batch {args.batch}, k_trunc={args.k_trunc}, k_top={args.k_top}, "
          f"k_att={args.k_att}, variant={args.variant}, {args.threads} thread(s), torch {torch.__version__}, "
          f"median of {args.reps} steps per method after one warm-up, interleaved\n")
    print(tabulate(rows, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()

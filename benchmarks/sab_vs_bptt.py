"""Time per training step and saved-for-backward bytes of SAB against full BPTT, measured in one run.

Per horizon T: `bptt` on the plain LSTM, then `sab` (and, with --sab-bptt, `sab_bptt`: full BPTT
through the SAB network) for every scorer and every k_att asked for; ratios are to `bptt`. One
training step = one batch of whole copy sequences (L = T + 20) with its parameter update. All the
configurations of one horizon are stepped in interleaved rounds, so that the machine's changing load
falls on all of them alike; after one warm-up step, each is timed --reps times, every timed step
from the initial parameters and optimizer state (restored, untimed, before it): SAB's exact
gradient overflows at T = 1000 (see the README), and a configuration whose first update makes its
parameters NaN would otherwise be timed on NaNs, not on the arithmetic of training. The column
`finite grad` says in how many timed steps the gradient's norm was finite (at T = 1000 SAB's is
not, from initialisation: its time is that of the arithmetic, on a network that cannot train).
Costs that depend on the parameters are not seen (the compiled mlp read scores a lane with tanh,
about four times slower, once its query grows past |2q| = 40). Two clocks: the
median wall-clock (what DESIGN.md reports), and the minimum CPU time of the thread (less disturbed
by other processes on a shared machine; `time.thread_time`).

    python benchmarks/sab_vs_bptt.py                                  # T = 100 and 1000, both scorers, k_att 2 and 10
    python benchmarks/sab_vs_bptt.py --seq-len 100 --reps 21 --out /tmp/t.md
"""
import argparse
import copy
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
from methods import _sab_native  # noqa: E402

TARGETS = {"mlp": 2.5, "bilinear": 1.6}   # issue 17: sab per step against bptt


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
    start = copy.deepcopy((net.state_dict(), updater.optimizer.state_dict()))
    with meter.measure():
        method.train_step(net, batch, updater, None)

    run = {"wall": [], "cpu": [], "finite": [], "saved": meter.peak, "state": method.state_bytes(),
           "label": method.label, "step": lambda: method.train_step(net, next(stream), updater, None)}

    def restore():
        net.load_state_dict(start[0])
        updater.optimizer.load_state_dict(start[1])
        norms = updater.take_norms()   # of the step since the last restore (none before the first)
        if run["wall"]:
            run["finite"].append(bool(torch.isfinite(norms).all()))

    run["restore"] = restore
    return run


def measure_interleaved(runs: dict, reps: int) -> None:
    """Time one step of each configuration in turn, reps times, each from the initial parameters."""
    for _ in range(reps):
        for r in runs.values():
            r["restore"]()
            w0, c0 = time.perf_counter(), time.thread_time()
            r["step"]()
            r["cpu"].append(time.thread_time() - c0)
            r["wall"].append(time.perf_counter() - w0)
    for r in runs.values():
        r["restore"]()   # collects the last step's gradient norm
        r["ms"], r["cpu_ms"] = 1e3 * statistics.median(r["wall"]), 1e3 * min(r["cpu"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(v) for v in s.split(",")]
    p.add_argument("--seq-len", type=ints, default=[100, 1000])
    p.add_argument("--k-att", type=ints, default=[2, 10])
    p.add_argument("--scorers", type=lambda s: s.split(","), default=["mlp", "bilinear"])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--cell", default="lstm")
    p.add_argument("--k-trunc", type=int, default=10)
    p.add_argument("--k-top", type=int, default=5)
    p.add_argument("--variant", default="paper")
    p.add_argument("--sab-bptt", action="store_true", help="also time sab_bptt (full BPTT through the SAB network)")
    p.add_argument("--reps", type=int, default=None, help="timed steps per configuration (default 15 at T <= 200, else 5)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for T in args.seq_len:
        runs = {"bptt": prepare("bptt", {}, T, args)}
        for k_att in args.k_att:
            for scorer in args.scorers:
                att = {"k_top": args.k_top, "k_att": k_att, "variant": args.variant, "scorer": scorer}
                runs[("sab", scorer, k_att)] = prepare("sab", {"k_trunc": args.k_trunc, **att}, T, args)
                if args.sab_bptt:
                    runs[("sab_bptt", scorer, k_att)] = prepare("sab_bptt", att, T, args)
        reps = args.reps or (15 if T <= 200 else 5)
        measure_interleaved(runs, reps)
        bptt = runs["bptt"]
        for key, r in runs.items():
            name, scorer, k_att = key if isinstance(key, tuple) else (key, "", "")
            target = TARGETS.get(scorer) if name == "sab" else None
            ratio = r["ms"] / bptt["ms"]
            rows.append({"T": T, "L": T + 20, "method": name, "scorer": scorer, "k_att": k_att,
                         "ms/step": f"{r['ms']:.0f}", "x bptt": f"{ratio:.2f}",
                         "cpu ms": f"{r['cpu_ms']:.0f}", "cpu x bptt": f"{r['cpu_ms'] / bptt['cpu_ms']:.2f}",
                         "target": f"<= {target}" if target else "",
                         "finite grad": f"{sum(r['finite'])}/{len(r['finite'])}",
                         "saved MiB": f"{r['saved'] / 2**20:.1f}", "saved x bptt": f"{r['saved'] / bptt['saved']:.2f}",
                         "state KiB": f"{r['state'] / 2**10:.0f}"})
        print(tabulate(rows[-len(runs):], headers="keys", tablefmt="github"), flush=True)
    head = (f"{args.cell}-{args.hidden}, batch {args.batch}, k_trunc={args.k_trunc}, k_top={args.k_top}, "
            f"variant={args.variant}, {args.threads} thread(s), torch {torch.__version__}; per configuration "
            f"the median wall-clock and the minimum thread CPU time of --reps steps after one warm-up, each "
            f"timed step from the initial parameters and optimizer state (restored untimed), all "
            f"configurations of one T interleaved; SAB's compiled read: "
            f"{'on' if _sab_native.library() is not None else 'off (' + str(_sab_native._why_not) + ')'}")
    table = tabulate(rows, headers="keys", tablefmt="github")
    print(f"\n{head}\n\n{table}")
    if args.out:
        cmd = "python benchmarks/sab_vs_bptt.py " + " ".join(sys.argv[1:])
        args.out.write_text(f"# SAB against full BPTT: time per step and saved bytes\n\n`{cmd}` "
                            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n{head}\n\n{table}\n")


if __name__ == "__main__":
    main()

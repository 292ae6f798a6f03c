"""Where the exact gradient through the SAB network explodes: |g*| at initialisation (the harness's
reference gradient, full BPTT through the SAB network) on copy, LSTM 128, batch 32, per seed and per
parameter group, with what each candidate remedy does to it.

For every configuration and seed (initialised and batched exactly as the runner does): |g*| overall
and for the cell, the scorer and the readout; the spread s = sum_j relu(a_j - threshold) of the top
scores over the threshold each variant applies (the sparsifier's normaliser, median and minimum over the long-memory reads
of the sequence: the weights' derivative is about 1/s, since w = relu(a - a_(k+1)) / s does not
change when the scores are scaled); the norm of the stored memories (mean, max); and, with
--floors, |g*| when the paper's normaliser max(s, floor) is floored higher than the default 1e-12.

    python benchmarks/sab_gradient_norms.py                      # T=100: the default, bilinear, provisional, released
    python benchmarks/sab_gradient_norms.py --seq-len 20,100,300 --configs 'sab_bptt;sab_bptt[store=provisional]'
"""
import argparse
import sys
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.config import parse_spec_list  # noqa: E402
from harness.fidelity import flat, reference_gradient  # noqa: E402
from harness.method import RunSpec  # noqa: E402
from harness.registry import METHODS, TASKS  # noqa: E402
from harness.task import stream_seed  # noqa: E402
from methods._sab_network import Sparsifier  # noqa: E402

CONFIGS = ("bptt;sab_bptt;sab_bptt[threshold_grad=false];sab_bptt[scorer=bilinear];sab_bptt[store=provisional];"
           "sab_bptt[scorer=bilinear,store=provisional];sab_bptt[variant=released]")


class SpreadRecorder:
    """Records s = sum_j relu(a_j - threshold_j) of every long-memory read while installed, against the
    threshold the variant's sparsifier applies."""

    def __init__(self):
        self.spreads, self._orig = [], Sparsifier.forward

    def __enter__(self):
        recorder = self

        def forward(sparsifier, a, long):
            if long:
                recorder.spreads.append((a - sparsifier.threshold(a)).clamp_min(0).sum(1))
            return recorder._orig(sparsifier, a, long)
        Sparsifier.forward = forward
        return self

    def __exit__(self, *exc):
        Sparsifier.forward = self._orig


def measure(spec, T: int, seed: int, hidden: int, batch: int, floors: list[float]) -> dict:
    task = TASKS.get("copy")(T)
    method = METHODS.get(spec.name)(**spec.params)
    torch.manual_seed(stream_seed(seed, "init"))
    net = method.build_network(RunSpec("lstm", task.input_size, hidden, task.output_size, task.num_steps, batch))
    data = next(task.stream(seed, "fidelity", batch))
    with SpreadRecorder() as rec:
        g = reference_gradient(net, data)
    names = [n for n, _ in net.named_parameters()]
    part = lambda prefix: float(flat([gi for n, gi in zip(names, g) if n.startswith(prefix)] or [torch.zeros(1)]).norm())
    row = {"T": T, "config": spec.name + (f"[{','.join(f'{k}={v}' for k, v in spec.params.items())}]" if spec.params else ""),
           "seed": seed, "|g*|": float(flat(g).norm()), "cell": part("cell"), "scorer": part("scorer"),
           "readout": part("readout")}
    if rec.spreads:
        s = torch.cat(rec.spreads)
        row.update({"s median": float(s.median()), "s min": float(s.min())})
        with torch.no_grad():
            carry = net.init_carry(batch)
            for t in range(data.num_steps):
                _, carry = net.step(data.x[t], carry)
            norms = carry[1].rows().norm(dim=2)
        row.update({"|m| mean": float(norms.mean()), "|m| max": float(norms.max())})
        for floor in floors if not net.sparsifier.released else ():   # (the release's normaliser is sum + 1e-7)
            net.sparsifier.floor = floor
            row[f"|g*| floor {floor:g}"] = float(flat(reference_gradient(net, data)).norm())
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=lambda s: [int(v) for v in s.split(",")], default=[100])
    p.add_argument("--configs", default=CONFIGS, help="';'-separated method specs")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--floors", type=lambda s: [float(v) for v in s.split(",")] if s else [], default=[0.01, 0.1])
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for T in args.seq_len:
        for text in args.configs.split(";"):
            (spec,) = parse_spec_list(text)
            for seed in range(args.seeds):
                rows.append(measure(spec, T, seed, args.hidden, args.batch, args.floors))
                print(tabulate([rows[-1]], headers="keys", floatfmt=".3g"), flush=True)
    print(f"\ncopy, lstm-{args.hidden}, batch {args.batch}, at initialisation (the runner's init and fidelity batch "
          f"per seed), torch {torch.__version__}\n")
    print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".3g"))


if __name__ == "__main__":
    main()

"""Transfer to longer sequences: each finished run of a results folder, evaluated at longer horizons
from its final parameters (the state its trajectory file holds at its last step), with per-method
means over seeds, Student-t intervals and Welch tests of SAB against every other method
(Holm-corrected within each horizon).

A run saves its network at its fidelity checkpoints, the last step included, in
`OUT/trajectories/<hash>.pt` (harness/trajectory.py); this script rebuilds each run's network from
its record's configuration, loads that state, and scores it on held-out sequences of each horizon
drawn exactly as the runner draws its test batches (the run's seed, split "test"). Nothing is
trained. Writes `OUT/generalisation.md` and prints it.

    python benchmarks/sab_generalisation.py results/reference/sab-paper-copy-T100 --horizons 200,300
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import stats  # noqa: E402
from harness.runner import RunConfig, evaluate  # noqa: E402

TRAJECTORIES = "trajectories"


def final_state(out: Path, record: dict) -> dict | None:
    """The run's network at its last step, or None when its trajectory file is missing or ends earlier."""
    file = out / TRAJECTORIES / f"{record['hash']}.pt"
    if not file.exists():
        return None
    states = torch.load(file, map_location="cpu", weights_only=True)
    last = max(states, default=None)
    return states[last] if last is not None and last == record.get("steps_done", record["config"]["steps"]) else None


def scores_at(out: Path, record: dict, horizons: list[int], batches: int) -> dict[int, float] | None:
    cfg = RunConfig(**record["config"])
    state = final_state(out, record)
    if state is None:
        return None
    torch.set_num_threads(cfg.threads)
    task = cfg.build_task()
    net = cfg.build_method().build_network(cfg.spec(task))
    net.load_state_dict(state)
    net = net.to(dtype={"float32": torch.float32, "float64": torch.float64}[cfg.dtype])
    result = {cfg.seq_len: record["final"]["score"]}
    for T in horizons:
        stream = cfg.build_task(T).stream(cfg.seed, "test", cfg.batch)
        result[T] = evaluate(net, [next(stream).to(dtype=next(net.parameters()).dtype) for _ in range(batches)])[1]
    return result


def holm(pvalues: list[float | None]) -> list[float | None]:
    """stats.holm over the p-values that exist (None stays None: no test was possible)."""
    present = [i for i, p in enumerate(pvalues) if p is not None]
    adjusted = stats.holm([pvalues[i] for i in present]) if present else []
    out = [None] * len(pvalues)
    for i, a in zip(present, adjusted):
        out[i] = float(a)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="results folder (with runs/ and trajectories/)")
    p.add_argument("--horizons", type=lambda s: [int(v) for v in s.split(",")], required=True)
    p.add_argument("--batches", type=int, default=8, help="held-out batches per horizon (of the run's batch size)")
    p.add_argument("--reference", default="sab", help="the method tested against the others (its label prefix)")
    args = p.parse_args()
    records = [json.loads(f.read_text()) for f in sorted((args.out / "runs").glob("*.json"))]
    records = [r for r in records if r.get("status") == "ok"]
    per_run, missing, metrics = [], [], {}
    for r in records:
        s = scores_at(args.out, r, args.horizons, args.batches)
        if s is None:
            missing.append(f"{r['method_label']} seed {r['config']['seed']}")
            continue
        label = f"{r['method_label']} on {r['config']['task']}" + (
            f"[{','.join(f'{k}={v}' for k, v in r['config']['task_params'].items())}]" if r['config']['task_params'] else "")
        metrics[label] = r.get("metric")
        per_run.append({"method": label, "seed": r["config"]["seed"], **{f"T={T}": v for T, v in s.items()}})
    per_run.sort(key=lambda row: (row["method"], row["seed"]))
    horizons = [k for k in per_run[0] if k.startswith("T=")] if per_run else []
    methods = sorted({row["method"] for row in per_run})
    scores = {(m, h): [row[h] for row in per_run if row["method"] == m] for m in methods for h in horizons}
    summary = []
    for h in horizons:
        ref = [m for m in methods if m.split("[")[0].split(" ")[0] == args.reference]
        others = [m for m in methods if m not in ref]
        for m_ref in ref:
            tests = [stats.welch(scores[(m_ref, h)], scores[(o, h)]) for o in others]
            adjusted = holm([t.p_value for t in tests])
            for m in [m_ref] + others:
                # the t interval cut to what the score can take (accuracy in [0, 1]), as in the tables
                mean, low, high = stats.mean_ci(scores[(m, h)], bounds=stats.metric_range(metrics[m]))
                interval = f" [{low:.3f}, {high:.3f}]" if np.isfinite(low) else " (fewer than 3 seeds: no interval)"
                row = {"horizon": h, "method": m, "mean [95% CI]": f"{mean:.3f}{interval}",
                       "seeds": " ".join(f"{v:.3f}" for v in scores[(m, h)])}
                if m != m_ref:
                    i = others.index(m)
                    row[f"{args.reference} vs it: Welch p (Holm)"] = (
                        f"{tests[i].p_value:.3g} ({adjusted[i]:.3g})" if tests[i].p_value is not None else tests[i].reason)
                summary.append(row)
    text = (f"# Transfer to longer sequences\n\n`python benchmarks/sab_generalisation.py {args.out} --horizons "
            f"{','.join(map(str, args.horizons))} --batches {args.batches}`: each run's final parameters scored on "
            f"{args.batches} held-out batches per horizon (the training horizon's column is the run's own final score).\n\n"
            + tabulate(summary, headers="keys", tablefmt="github", disable_numparse=True) + "\n\nPer run:\n\n"
            + tabulate([{k: f"{v:.3f}" if isinstance(v, float) else v for k, v in row.items()} for row in per_run],
                       headers="keys", tablefmt="github", disable_numparse=True) + "\n"
            + (f"\nNo final parameters for: {', '.join(missing)} (no trajectory file at the last step).\n" if missing else ""))
    (args.out / "generalisation.md").write_text(text)
    print(text)
    return 0 if per_run else 1


if __name__ == "__main__":
    sys.exit(main())

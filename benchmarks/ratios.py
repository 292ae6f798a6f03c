"""Ratio tables from a pytest-benchmark JSON of the suite in benchmarks/ (README, "Benchmark suite").

Every ratio is taken within one run (one JSON): a method's time against bptt's on the same
configuration and cell within its paired rounds (one bptt step before each timed step; the median of
the per-round ratios), memory against bptt's benchmark; the targets against their own baselines the
same way. Times are medians over rounds.

    python -m pytest benchmarks --benchmark-only --benchmark-autosave
    python benchmarks/ratios.py                      # the newest file under .benchmarks/
    python benchmarks/ratios.py run.json --out results/reference/benchmarks.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"ckpt_bptt": {"time": 1.5, "memory": 0.25}, "dni": {"time": 1.5}}   # by label: default options


def newest(storage: Path) -> Path:
    files = sorted(storage.glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        sys.exit(f"no saved benchmark runs under {storage}: run "
                 f"`python -m pytest benchmarks --benchmark-only --benchmark-autosave` first")
    return files[-1]


def mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def x_bptt(b, ref) -> str:
    """b's time over bptt's: within its paired rounds when it has them, else over bptt's median."""
    i = b["extra_info"]
    if i.get("method") == "bptt":
        return "1"
    if i.get("baseline") == "bptt" and "paired_ratio" in i:
        return f"{i['paired_ratio']:.2f}"
    return ratio(b["stats"]["median"], ref and ref["stats"]["median"])


def paired_ratio(b):
    i = b["extra_info"]
    return i["paired_ratio"] if i.get("baseline") == "bptt" and "paired_ratio" in i else None


def rows_by(benchmarks, suite):
    return [b for b in benchmarks if b["extra_info"].get("suite") == suite]


def methods_table(benchmarks) -> str:
    rows, bs = [], rows_by(benchmarks, "methods")
    base = {(b["extra_info"]["config"], b["extra_info"]["cell"]): b for b in bs
            if b["extra_info"]["method"] == "bptt"}
    for b in sorted(bs, key=lambda b: (b["extra_info"]["config"] != "standard", b["extra_info"]["cell"],
                                       b["stats"]["median"])):
        i, ref = b["extra_info"], base.get((b["extra_info"]["config"], b["extra_info"]["cell"]))
        ms = 1e3 * b["stats"]["median"]
        held = i["saved_bytes"] + i["state_bytes"]
        rows.append({"config": f"{i['config']} (H{i['hidden']}, B{i['batch']})", "cell": i["cell"],
                     "method": i["label"], "ms/step": f"{ms:.1f}",
                     "x bptt": x_bptt(b, ref),
                     "ms/update": f"{ms / max(i['updates_per_step'], 1):.2f}",
                     "saved": mib(i["saved_bytes"]), "state": mib(i["state_bytes"]),
                     "saved+state x bptt": ratio(held, ref and ref["extra_info"]["saved_bytes"]),
                     "params": i["n_params"], "rounds": b["stats"]["rounds"]})
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) if rows else ""


def targets_table(benchmarks) -> str:
    rows = []
    for b in rows_by(benchmarks, "targets"):
        i, base = b["extra_info"], b["extra_info"]["baseline_info"]
        target = TARGETS.get(i["label"], {})
        memory = (i["saved_bytes"] + i["state_bytes"]) / max(base["saved_bytes"] + base["state_bytes"], 1)
        verdicts = []
        if "time" in target:
            verdicts.append(f"time <= {target['time']}x: {'met' if i['paired_ratio'] <= target['time'] else 'missed'}")
        if "memory" in target:
            verdicts.append(f"memory <= {target['memory']}x: {'met' if memory <= target['memory'] else 'missed'}")
        rows.append({"method": i["label"], "baseline": i["baseline"], "L": i["L"], "cell": f"{i['cell']}-{i['hidden']}",
                     "batch": i["batch"], "ms/step": f"{i['paired_ms']:.0f}",
                     "baseline ms/step": f"{i['baseline_paired_ms']:.0f}", "time x baseline (paired)": f"{i['paired_ratio']:.2f}",
                     "saved+state": mib(i["saved_bytes"] + i["state_bytes"]),
                     "baseline saved+state": mib(base["saved_bytes"] + base["state_bytes"]),
                     "memory x baseline": f"{memory:.3f}", "rounds": b["stats"]["rounds"],
                     "targets": "; ".join(verdicts) or "none"})
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) if rows else ""


def online_table(benchmarks) -> str:
    rows, bs = [], rows_by(benchmarks, "online_costs")
    key = lambda b: (b["extra_info"]["cell"], b["extra_info"]["hidden"], b["extra_info"]["batch"])
    base = {key(b): b for b in bs if b["extra_info"]["method"] == "bptt"}
    for b in sorted(bs, key=lambda b: (*key(b), b["stats"]["median"])):
        i, ref = b["extra_info"], base.get(key(b))
        rows.append({"cell": i["cell"], "hidden": i["hidden"], "batch": i["batch"], "method": i["label"],
                     "ms per time step": f"{1e3 * b['stats']['median'] / i['L']:.3f}",
                     "x bptt": x_bptt(b, ref),
                     "state": mib(i["state_bytes"]), "saved": mib(i["saved_bytes"]), "rounds": b["stats"]["rounds"]})
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) if rows else ""


def sab_table(benchmarks) -> str:
    rows, bs = [], rows_by(benchmarks, "sab_vs_bptt")
    by = {(b["extra_info"]["T"], b["extra_info"]["method"]): b for b in bs}
    for b in sorted(bs, key=lambda b: (b["extra_info"]["T"], b["stats"]["median"])):
        i = b["extra_info"]
        bp, sb = by.get((i["T"], "bptt")), by.get((i["T"], "sab_bptt"))
        rows.append({"T": i["T"], "L": i["L"], "method": i["label"], "ms/step": f"{1e3 * b['stats']['median']:.0f}",
                     "x bptt": x_bptt(b, bp),
                     # each time is paired with bptt's in its own rounds, not with sab_bptt's: the quotient of
                     # the two paired ratios (a quotient of unpaired medians contradicted the x bptt column)
                     "x sab_bptt (via bptt)": ratio(paired_ratio(b), sb and paired_ratio(sb)),
                     "saved": mib(i["saved_bytes"]),
                     "saved x bptt": ratio(i["saved_bytes"], bp and bp["extra_info"]["saved_bytes"]),
                     "state": mib(i["state_bytes"]), "rounds": b["stats"]["rounds"]})
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True) if rows else ""


def report(data: dict, source: str) -> str:
    m, c, bs = data.get("machine_info", {}), data.get("commit_info", {}), data["benchmarks"]
    loads = [b["extra_info"].get("load_average") for b in bs if b["extra_info"].get("load_average") is not None]
    head = (f"# Benchmark suite: ratios\n\n`{source}`, {data.get('datetime', '?')}; commit "
            f"{(c.get('id') or '?')[:10]}{' (dirty)' if c.get('dirty') else ''}; {m.get('cpu', {}).get('brand_raw', m.get('processor', '?'))}, "
            f"{m.get('cpu', {}).get('count', '?')} cores, Python {m.get('python_version', '?')}; one thread per benchmark; "
            f"load average {min(loads, default=0):.1f} to {max(loads, default=0):.1f} while it ran (above 1, other work "
            f"shared the machine and the ratios are indicative).\n")
    parts = [head]
    for title, table in (("Targets (paired rounds)", targets_table(bs)),
                         ("Every method (copy T=80, L=100; time median over rounds; x bptt: median of the per-round "
                          "ratios to a bptt step on the same configuration and cell)", methods_table(bs)),
                         ("Online methods (adding T=20; ratios to bptt on the same cell, hidden and batch)", online_table(bs)),
                         ("SAB against BPTT (LSTM 128, batch 32)", sab_table(bs))):
        if table:
            parts.append(f"## {title}\n\n{table}\n")
    return "\n".join(parts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json", nargs="?", type=Path, help="a pytest-benchmark JSON (default: the newest saved run)")
    p.add_argument("--storage", type=Path, default=ROOT / ".benchmarks", help="pytest-benchmark's storage folder")
    p.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    path = args.json or newest(args.storage)
    text = report(json.loads(path.read_text()), str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()

"""The comparison table: one row per method configuration and task, aggregated over seeds.

Written as summary.csv (every column, raw numbers), summary.md (GitHub markdown) and
summary.tex (LaTeX booktabs), and printed to the terminal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from .store import write_atomic

GROUP = ["method", "params", "task", "seq_len", "eval_seq_len", "cell", "hidden"]
COLUMNS = GROUP + ["tuned", "n_params", "seeds", "failed", "metric", "score_mean", "score_std", "chance",
                   "time_ms_per_step", "time_ms_per_update", "updates_per_step", "saved_bytes", "state_bytes",
                   "cuda_peak_bytes", "grad_cosine", "grad_cosine_recurrent", "grad_rel_error",
                   "grad_cosine_recurrent_init", "grad_rel_bias", "grad_rel_bias_se", "grad_rel_variance",
                   "threads", "device", "concurrent"]


def record_row(r: dict) -> dict:
    """One flat row per run record."""
    cfg = r["config"]
    label = r.get("method_label") or cfg["method"]
    name = label.split("[", 1)[0]  # the method's name (cfg["method"] may be a file path)
    row = {"method": name, "params": label[len(name):].strip("[]"),
           "task": cfg["task"] + (f"[{','.join(f'{k}={v}' for k, v in cfg['task_params'].items())}]"
                                  if cfg.get("task_params") else ""),
           "seq_len": cfg["seq_len"], "eval_seq_len": cfg.get("eval_seq_len") or cfg["seq_len"],
           "cell": cfg["cell"], "hidden": cfg["hidden"], "seed": cfg["seed"], "status": r.get("status"),
           "n_params": r.get("n_params"), "metric": r.get("metric"), "chance": r.get("chance"),
           "threads": cfg.get("threads"), "device": cfg.get("device"), "tuned": r.get("tuned", ""),
           "concurrent": (r.get("executor") or {}).get("concurrent", 1)}
    if r.get("status") != "ok":
        return row
    time_, mem = r.get("time", {}), r.get("memory", {})
    fid = r.get("fidelity") or [{}]
    last, first = fid[-1], fid[0]
    row.update(score=r["final"]["score"], time_ms_per_step=time_.get("ms_per_step"),
               time_ms_per_update=time_.get("ms_per_update"), updates_per_step=time_.get("updates_per_step"),
               saved_bytes=mem.get("saved_bytes"), state_bytes=mem.get("state_bytes"),
               cuda_peak_bytes=mem.get("cuda_peak_bytes"), grad_cosine=last.get("cosine"),
               grad_cosine_recurrent=last.get("cosine_recurrent"), grad_rel_error=last.get("rel_error"),
               grad_cosine_recurrent_init=first.get("cosine_recurrent"), grad_rel_bias=last.get("rel_bias"),
               grad_rel_bias_se=last.get("rel_bias_se"), grad_rel_variance=last.get("rel_variance"))
    return row


def _mean(s: pd.Series):
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else np.nan


def summarise(records: list[dict]) -> pd.DataFrame:
    rows = [record_row(r) for r in records if r]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    out = []
    for key, g in df.groupby(GROUP, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(GROUP, key))
        row.update(n_params=g["n_params"].dropna().iloc[0] if g["n_params"].notna().any() else np.nan,
                   seeds=len(ok), failed=len(g) - len(ok), metric=g["metric"].dropna().iloc[0]
                   if g["metric"].notna().any() else "", chance=_mean(g["chance"]),
                   threads=g["threads"].iloc[0], device=g["device"].iloc[0],
                   tuned=next((t for t in g["tuned"] if t), ""), concurrent=g["concurrent"].max())
        if len(ok):
            row["score_mean"] = _mean(ok["score"])
            row["score_std"] = float(ok["score"].std(ddof=1)) if len(ok) > 1 else np.nan
            for col in COLUMNS:
                if col not in row and col in ok:
                    row[col] = _mean(ok[col])
        out.append(row)
    return pd.DataFrame(out).reindex(columns=COLUMNS)


def _bytes(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024


def _num(v, fmt="{:.3f}") -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def display(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader compares, formatted; the CSV keeps every raw number."""
    rows = []
    for _, r in df.iterrows():
        score = _num(r["score_mean"]) + (f" ± {_num(r['score_std'])}" if not pd.isna(r["score_std"]) else "")
        bias = ""
        if not pd.isna(r["grad_rel_bias"]):
            bias = f"{r['grad_rel_bias']:.3f} ± {r['grad_rel_bias_se']:.3f}"
        rows.append({
            "method": r["method"] + (f"[{r['params']}]" if r["params"] else ""),
            "tuned": r["tuned"] if isinstance(r["tuned"], str) else "",
            "task": r["task"], "T": r["seq_len"] if r["eval_seq_len"] == r["seq_len"]
            else f"{r['seq_len']}→{r['eval_seq_len']}",
            "cell": f"{r['cell']}-{r['hidden']}", "seeds": f"{r['seeds']}" + (f" ({r['failed']} failed)"
                                                                                  if r["failed"] else ""),
            r["metric"] or "score": score, "chance": _num(r["chance"]),
            "ms/step": _num(r["time_ms_per_step"], "{:.1f}"), "ms/update": _num(r["time_ms_per_update"], "{:.2f}"),
            "saved": _bytes(r["saved_bytes"]), "state": _bytes(r["state_bytes"]),
            "cos": _num(r["grad_cosine"], "{:.4f}"), "cos rec": _num(r["grad_cosine_recurrent"], "{:.4f}"),
            "rel err": _num(r["grad_rel_error"], "{:.2e}"), "rel bias": bias,
            "rel var": _num(r["grad_rel_variance"], "{:.3g}"),
        })
    shown = pd.DataFrame(rows)
    # one score column per metric would be clearer than a mixed one: merge into "score (metric)"
    metric_cols = [c for c in shown.columns if c in ("accuracy", "mse", "score")]
    if metric_cols:
        merged = shown[metric_cols].bfill(axis=1).iloc[:, 0].fillna("")
        shown = shown.drop(columns=metric_cols)  # a row whose runs all failed has no metric: "score"
        shown.insert(5, "score", [f"{s} ({m})" if s else "" for s, m in zip(merged, df["metric"])])
    return shown.loc[:, (shown != "").any(axis=0)]


FOOTNOTE = ("score: mean ± sample std over seeds on held-out batches at the evaluation horizon; "
            "ms/step: median wall-clock per training step after warm-up; saved: peak bytes held by "
            "autograd during one step; state: the method's carried state; cos, cos rec, rel err: "
            "gradient fidelity against full BPTT at the end of training (cos rec: recurrent "
            "parameters only); rel bias, rel var: stochastic methods only.")


PARALLEL_NOTE = ("Warning: some runs were timed while up to {n} runs ran at the same time (joblib or SLURM "
                 "executor); their ms/step and ms/update are not comparable with times measured alone. "
                 "Time with --executor local (one run after another) to compare speed.")


def notes(df: pd.DataFrame) -> list[str]:
    """Footnotes that depend on the records: timings measured in parallel."""
    n = pd.to_numeric(df.get("concurrent", pd.Series(dtype=float)), errors="coerce").max()
    return [PARALLEL_NOTE.format(n=int(n))] if n == n and n > 1 else []


def write(df: pd.DataFrame, out: Path) -> str:
    out = Path(out)
    extra = "".join("\n\n" + note for note in notes(df))
    shown = display(df) if len(df) else pd.DataFrame()
    md = tabulate(shown, headers="keys", tablefmt="github", showindex=False)
    write_atomic(out / "summary.csv", df.to_csv(index=False))
    write_atomic(out / "summary.md", md + "\n\n" + FOOTNOTE + extra + "\n")
    write_atomic(out / "summary.tex", tabulate(shown, headers="keys", tablefmt="latex_booktabs",
                                               showindex=False) + "\n")
    return md + extra

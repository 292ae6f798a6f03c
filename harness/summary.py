"""The comparison table: one row per method configuration and task, aggregated over seeds.

Written as summary.csv (every column, raw numbers), summary.md (GitHub markdown) and
summary.tex (LaTeX booktabs), and printed to the terminal.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from . import stats
from .store import write_atomic

GROUP = ["method", "params", "task", "seq_len", "eval_seq_len", "cell", "hidden"]
# rows compared with each other by the test against the best: same task, horizon and model
PEERS = [c for c in GROUP if c not in ("method", "params")]
COLUMNS = GROUP + ["tuned", "n_params", "seeds", "failed", "metric", "score_mean", "score_std", "score_ci_low",
                   "score_ci_high", "solved_threshold", "solved_frac", "sequences_to_solve_median",
                   "higher_is_better", "best", "p_vs_best", "differs_from_best", "no_test_reason", "chance",
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
           "cell": _cell(cfg), "hidden": cfg["hidden"], "seed": cfg["seed"], "status": r.get("status"),
           "n_params": r.get("n_params"), "metric": r.get("metric"), "chance": r.get("chance"),
           "threads": cfg.get("threads"), "device": cfg.get("device"), "tuned": r.get("tuned", ""),
           "concurrent": (r.get("executor") or {}).get("concurrent", 1)}
    if r.get("status") != "ok":
        return row
    threshold, higher = _threshold(r), r.get("higher_is_better", True)
    row.update(solved_threshold=threshold, higher_is_better=higher,
               solved=stats.reached(r["final"]["score"], threshold, higher) if threshold is not None else None,
               sequences_to_solve=stats.sequences_to_solve(r.get("curve", []), threshold, higher))
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


def _cell(cfg: dict) -> str:
    """The cell, with its time constant where it has one (runs differing in tau are different rows)."""
    return cfg["cell"] + (f"[tau={cfg['tau']:g}]" if cfg.get("tau") is not None else "")


def _threshold(r: dict) -> float | None:
    """The task's solved threshold from the record; records written before it was stored ask the
    task class."""
    return r["solved_threshold"] if "solved_threshold" in r else _declared_threshold(r["config"]["task"])


@functools.lru_cache(maxsize=None)
def _declared_threshold(task: str) -> float | None:
    try:
        from .registry import TASKS
        return TASKS.get(task).solved_threshold
    except Exception:  # noqa: BLE001 - a task that is not installed here: no threshold
        return None


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
            row["score_mean"], row["score_ci_low"], row["score_ci_high"] = stats.mean_ci(ok["score"])
            row["score_std"] = float(ok["score"].std(ddof=1)) if len(ok) > 1 else np.nan
            row["scores"] = list(ok["score"])
            row["higher_is_better"] = bool(ok["higher_is_better"].iloc[0])
            threshold = ok["solved_threshold"].iloc[0]
            if threshold is not None and not pd.isna(threshold):
                row["solved_threshold"] = threshold
                row["solved_frac"] = float(ok["solved"].astype(bool).mean())
                # over the seeds that solved it (the solved fraction says how many did)
                row["sequences_to_solve_median"] = stats.median_or_nan(ok.loc[ok["solved"].astype(bool),
                                                                              "sequences_to_solve"])
            for col in COLUMNS:
                if col not in row and col in ok:
                    row[col] = _mean(ok[col])
        out.append(row)
    table = pd.DataFrame(out)
    compare_with_best(table)
    return table.reindex(columns=COLUMNS)


def compare_with_best(table: pd.DataFrame, alpha: float = stats.ALPHA) -> None:
    """Mark the best mean score among rows of the same task, horizon and model, and test every
    other row against it (Welch, two-sided, only with enough seeds on each side)."""
    for col in ("best", "p_vs_best", "differs_from_best", "no_test_reason"):
        table[col] = None
    if "scores" not in table:
        return
    for _, g in table.groupby(PEERS, sort=False, dropna=False):
        g = g[g["score_mean"].notna()]
        if g.empty:
            continue
        higher = bool(g["higher_is_better"].iloc[0])
        best = g["score_mean"].idxmax() if higher else g["score_mean"].idxmin()
        table.loc[g.index, "best"] = False
        table.at[best, "best"] = True
        for i in g.index:
            if i == best:
                continue
            result = stats.welch(table.at[i, "scores"], table.at[best, "scores"], alpha)
            table.at[i, "p_vs_best"] = result.p_value
            table.at[i, "differs_from_best"] = result.significant
            table.at[i, "no_test_reason"] = result.reason or None


def _bytes(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024


def _num(v, fmt="{:.3f}") -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def _score(r) -> str:
    text = _num(r["score_mean"])
    if text and not pd.isna(r["score_ci_low"]):
        text += f" [{_num(r['score_ci_low'])}, {_num(r['score_ci_high'])}]"
    return text + ("*" if r.get("differs_from_best") is True else "")


def _vs_best(r) -> str:
    if r.get("best") is True:
        return "best"
    if r.get("p_vs_best") is not None and not pd.isna(r.get("p_vs_best")):
        return f"p={r['p_vs_best']:.3g}" + ("*" if r["differs_from_best"] else "")
    return "no test" if r.get("best") is False else ""


def _solved(r) -> str:
    if pd.isna(r["solved_frac"]) or not r["seeds"]:
        return ""
    return f"{round(r['solved_frac'] * r['seeds'])}/{r['seeds']}"


def display(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader compares, formatted; the CSV keeps every raw number."""
    rows = []
    for _, r in df.iterrows():
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
            "score": f"{_score(r)} ({r['metric']})" if _score(r) else "", "vs best": _vs_best(r), "chance": _num(r["chance"]),
            "solved": _solved(r), "seqs to solve": _num(r["sequences_to_solve_median"], "{:.0f}"),
            "ms/step": _num(r["time_ms_per_step"], "{:.1f}"), "ms/update": _num(r["time_ms_per_update"], "{:.2f}"),
            "saved": _bytes(r["saved_bytes"]), "state": _bytes(r["state_bytes"]),
            "cos": _num(r["grad_cosine"], "{:.4f}"), "cos rec": _num(r["grad_cosine_recurrent"], "{:.4f}"),
            "rel err": _num(r["grad_rel_error"], "{:.2e}"), "rel bias": bias,
            "rel var": _num(r["grad_rel_variance"], "{:.3g}"),
        })
    shown = pd.DataFrame(rows)   # one "score (metric)" column: a run list may mix accuracy and MSE
    return shown.loc[:, (shown != "").any(axis=0)]


FOOTNOTE = ("score: mean over seeds on held-out batches at the evaluation horizon, with its "
            f"{stats.LEVEL:.0%} Student-t interval [low, high] (none with one seed); vs best: Welch's t-test "
            "of the seeds' scores against the best mean of the same task, horizon and model, two-sided, "
            f"alpha = {stats.ALPHA}, * where significant; solved: seeds whose final score reaches the task's "
            "threshold ({thresholds}); seqs to solve: median over those seeds of the training sequences "
            "seen at the first evaluation that reached it; "
            "ms/step: median wall-clock per training step after warm-up; saved: peak bytes held by "
            "autograd during one step; state: the method's carried state; cos, cos rec, rel err: "
            "gradient fidelity against full BPTT at the end of training (cos rec: recurrent "
            "parameters only); rel bias, rel var: stochastic methods only.")


def footnote(df: pd.DataFrame) -> str:
    """FOOTNOTE with the thresholds in use, and a sentence on the tests that could not be run."""
    thresholds = ", ".join(f"{task.split('[')[0]}: {metric} {'>=' if hib else '<='} {t:g}"
                           for task, metric, hib, t in
                           df.dropna(subset=["solved_threshold"])
                           [["task", "metric", "higher_is_better", "solved_threshold"]].drop_duplicates().itertuples(index=False))
    text = FOOTNOTE.replace("{thresholds}", thresholds or "none declared")
    untested = df[(df["best"] == False) & df["p_vs_best"].isna()]  # noqa: E712
    if len(untested):
        reasons = sorted(set(untested["no_test_reason"].dropna()))
        text += (f" No test was possible for {len(untested)} of the rows compared with a best ("
                 f"{'; '.join(reasons)}; the test needs at least {stats.MIN_SEEDS_FOR_TEST} seeds per side).")
    return text


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
    write_atomic(out / "summary.md", md + "\n\n" + footnote(df) + extra + "\n")
    write_atomic(out / "summary.tex", tabulate(shown, headers="keys", tablefmt="latex_booktabs",
                                               showindex=False) + "\n")
    return md + extra



PER_SEED = ["method", "task", "seq_len", "cell", "hidden", "seed", "status", "final", "final_loss", "best", "best_at",
            "peak_loss", "peak_loss_at"]


def per_seed(records: list[dict]) -> pd.DataFrame:
    """One row per run: where each seed ended, the best it reached and its worst held-out loss on the
    way, so a plateau exit, a collapse after a good score or a loss spike shows seed by seed (the
    comparison table averages them away)."""
    rows = []
    for r in records:
        row = record_row(r)
        out = {"method": r.get("method_label") or row["method"],
               **{k: row[k] for k in ("task", "seq_len", "cell", "hidden", "seed", "status")}}
        curve = [p for p in r.get("curve", []) if p.get("sequences")]   # evaluations after training began
        if row["status"] == "ok" and curve:
            sign = 1 if row["higher_is_better"] else -1
            best = max(curve, key=lambda p: sign * p["score"])
            worst = max(curve, key=lambda p: p["test_loss"] if np.isfinite(p["test_loss"]) else np.inf)
            out |= {"final": r["final"]["score"], "final_loss": r["final"]["test_loss"], "best": best["score"],
                    "best_at": best["sequences"], "peak_loss": worst["test_loss"], "peak_loss_at": worst["sequences"]}
        rows.append(out)
    return pd.DataFrame(rows, columns=PER_SEED)


PER_SEED_NOTE = ("final: score and held-out loss at the end; best: the best score at any evaluation after "
                 "training began, at the training sequences seen then; peak loss: the largest held-out loss at "
                 "any such evaluation, at the sequences seen then.")


def per_seed_markdown(df: pd.DataFrame) -> str:
    numbers = {"final": "{:.3f}", "final_loss": "{:.3f}", "best": "{:.3f}", "best_at": "{:.0f}",
               "peak_loss": "{:.3f}", "peak_loss_at": "{:.0f}"}
    shown = df.assign(**{c: [_num(v, f) for v in df[c]] for c, f in numbers.items()})
    shown = shown.assign(cell=[f"{c}-{h}" for c, h in zip(df["cell"], df["hidden"])]).drop(columns="hidden")
    shown = shown.rename(columns={"seq_len": "T", "final_loss": "final loss", "best_at": "best at",
                                  "peak_loss": "peak loss", "peak_loss_at": "peak loss at"})
    return tabulate(shown, headers="keys", tablefmt="github", showindex=False) + "\n\n" + PER_SEED_NOTE

"""The comparison table: one row per method configuration and task, aggregated over seeds.

Written as summary.csv (every column, raw numbers), summary.md (GitHub markdown) and
summary.tex (LaTeX booktabs), and printed to the terminal.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from . import stats, store
from .store import write_atomic

GROUP = ["method", "params", "task", "seq_len", "eval_seq_len", "cell", "hidden", "options"]
# rows compared with each other by the test against the best: same task, horizon, model and training options
PEERS = [c for c in GROUP if c not in ("method", "params")]
# gradient figures aggregated over seeds as median, min and max (never a mean: it hides a sign flip)
SPREAD = ["grad_cosine_recurrent", "exact_grad_norm", "grad_norm_ratio", "grad_cosine_recurrent_init", "grad_cosine",
          "grad_cosine_recurrent_own", "exact_grad_norm_own", "grad_norm_ratio_own"]
# aggregated as the median over seeds
MEDIAN = ["grad_rel_error", "grad_rel_bias", "grad_rel_bias_se", "grad_rel_variance", "grad_cosine_own",
          "grad_rel_error_own", "clipped_fraction", "grad_norm_median", "reference_score"]
FIDELITY = ["reference", "reference_solved", "reference_score", "fidelity_seeds",
            *[c + suffix for c in SPREAD[:5] for suffix in ("", "_min", "_max")], "grad_cosine_recurrent_seeds",
            "grad_rel_error", "grad_rel_bias", "grad_rel_bias_se", "grad_rel_variance",
            *[c + suffix for c in SPREAD[5:] for suffix in ("", "_min", "_max")], "grad_cosine_recurrent_own_seeds",
            "grad_cosine_own", "grad_rel_error_own", "clipped_fraction", "grad_norm_median"]
COLUMNS = GROUP + ["num_steps", "eval_num_steps", "lag", "eval_lag",
                   "tuned", "n_params", "seeds", "failed", "diverged", "stale", "metric", "score_mean", "score_std",
                   "score_ci_low", "score_ci_high", "scores", "solved_threshold", "solved_frac", "solved_ci_low",
                   "solved_ci_high", "sequences_to_solve_median",
                   "higher_is_better", "verdict", "p_vs_top", "p_holm", "no_test_reason", "chance",
                   "time_ms_per_step", "time_ms_per_step_min", "time_ms_per_step_max", "time_ms_per_update",
                   "time_ms_per_update_min", "time_ms_per_update_max", "updates_per_step", "saved_bytes",
                   "state_bytes", "cuda_peak_bytes", *FIDELITY, "threads", "device", "concurrent"]
# configuration fields that are not columns of their own: shown in `options` when records differ in them
_NOT_OPTIONS = {"method", "method_params", "task", "task_params", "seq_len", "eval_seq_len", "cell", "tau", "hidden",
                "seed"}


def status(r: dict) -> str | None:
    """The record's status; a record written `ok` with a non-finite final score (before divergence
    was checked after the last update) counts as diverged."""
    final = (r.get("final") or {}).get("score")
    if r.get("status") == "ok" and not (isinstance(final, (int, float)) and np.isfinite(final)):
        return "diverged"
    return r.get("status")


def _at_end(entries, steps) -> dict:
    return entries[-1] if entries and entries[-1].get("step") == steps else {}


def fidelity_figures(r: dict) -> dict:
    """The fidelity columns of one record: at the shared parameters of its reference trajectory
    (`fidelity`) and at its own (`_own`); at the end of training, and at step 0 (`_init`). Records
    made before shared parameters (no `fidelity_reference`) hold own-parameter figures only."""
    steps = r["config"].get("steps")   # optional in the schema: without it no entry counts as the end
    info = r.get("fidelity_reference")
    shared = r.get("fidelity") if info and "fidelity" in r else []
    own = r.get("fidelity_own") if "fidelity_own" in r else ([] if info else r.get("fidelity") or [])
    last, first, mine = _at_end(shared, steps), (shared[0] if shared and shared[0].get("step") == 0 else {}), \
        _at_end(own, steps)
    exact = last.get("exact_grad_norm")
    return {"reference": (info or {}).get("label"), "reference_solved": last.get("reference_solved"),
            "reference_score": last.get("reference_score"),
            "grad_cosine_recurrent": last.get("cosine_recurrent"), "grad_cosine": last.get("cosine"),
            "grad_rel_error": last.get("rel_error"), "exact_grad_norm": exact,
            "grad_norm_ratio": last.get("grad_norm_ratio"),
            "grad_cosine_recurrent_init": first.get("cosine_recurrent"),
            "grad_rel_bias": last.get("rel_bias"), "grad_rel_bias_se": last.get("rel_bias_se"),
            "grad_rel_variance": last.get("rel_variance"),
            "grad_cosine_recurrent_own": mine.get("cosine_recurrent"), "grad_cosine_own": mine.get("cosine"),
            "grad_rel_error_own": mine.get("rel_error"),
            "exact_grad_norm_own": mine.get("exact_grad_norm", mine.get("ref_norm")),
            "grad_norm_ratio_own": mine.get("grad_norm_ratio")}


def record_row(r: dict) -> dict:
    """One flat row per run record."""
    cfg = r["config"]
    label = r.get("method_label") or cfg["method"]
    name = label.split("[", 1)[0]  # the method's name (cfg["method"] may be a file path)
    row = {"method": name, "params": label[len(name):].strip("[]"),
           "task": cfg["task"] + (f"[{','.join(f'{k}={v}' for k, v in cfg['task_params'].items())}]"
                                  if cfg.get("task_params") else ""),
           "seq_len": cfg["seq_len"], "eval_seq_len": cfg.get("eval_seq_len") or cfg["seq_len"],
           "cell": _cell(cfg), "hidden": cfg["hidden"], "seed": cfg["seed"], "status": status(r),
           "num_steps": r.get("num_steps"), "eval_num_steps": r.get("eval_num_steps"), "lag": r.get("lag"),
           "eval_lag": r.get("eval_lag", r.get("lag")),
           "n_params": r.get("n_params"), "metric": r.get("metric"), "chance": r.get("chance"),
           "threads": cfg.get("threads"), "device": cfg.get("device"), "tuned": r.get("tuned", ""),
           "concurrent": (r.get("executor") or {}).get("concurrent", 1), "stale": r.get("stale_ignored", 0)}
    if row["status"] != "ok":
        return row
    threshold, higher = _threshold(r), r.get("higher_is_better", True)
    row.update(solved_threshold=threshold, higher_is_better=higher,
               solved=stats.reached(r["final"]["score"], threshold, higher) if threshold is not None else None,
               sequences_to_solve=stats.sequences_to_solve(r.get("curve", []), threshold, higher))
    time_, mem, training = r.get("time", {}), r.get("memory", {}), r.get("training") or {}
    row.update(score=r["final"]["score"], time_ms_per_step=time_.get("ms_per_step"),
               time_ms_per_update=time_.get("ms_per_update"), updates_per_step=time_.get("updates_per_step"),
               saved_bytes=mem.get("saved_bytes"), state_bytes=mem.get("state_bytes"),
               cuda_peak_bytes=mem.get("cuda_peak_bytes"), clipped_fraction=training.get("clipped_fraction"),
               grad_norm_median=training.get("grad_norm_median"), **fidelity_figures(r))
    return row


def options(records: list[dict]) -> list[str]:
    """For each record, the training options (steps, dtype, ...) in which the records differ, so that
    runs with different options are different rows; tuned options are in `tuned` instead."""
    from .tuning import TUNABLE
    configs = [r["config"] for r in records]
    varying = sorted(k for k in {k for c in configs for k in c} - _NOT_OPTIONS
                     if len({json.dumps(c.get(k), default=str) for c in configs}) > 1)
    return [",".join(f"{k}={c.get(k)}" for k in varying if not (k in TUNABLE and r.get("tuned")))
            for r, c in zip(records, configs)]


def _cell(cfg: dict) -> str:
    """The cell, with its time constant where it has one (runs differing in tau are different rows)."""
    return cfg["cell"] + (f"[tau={cfg['tau']:g}]" if cfg.get("tau") is not None else "")


def _threshold(r: dict) -> float | None:
    """The task's solved threshold, from the record alone (reading never imports the task it names:
    a record written before thresholds were stored has none, and report.write says so)."""
    return r.get("solved_threshold")


def _first(s: pd.Series):
    s = s.dropna()
    return s.iloc[0] if len(s) else np.nan


def _mean(s: pd.Series):
    """The mean over seeds, NaN unless every seed has a finite value: a mean never silently drops a
    seed (diverged runs are not among these rows: they are counted apart)."""
    s = pd.to_numeric(s, errors="coerce")
    return float(s.mean()) if len(s) and np.isfinite(s).all() else np.nan


def _per_seed(g: pd.DataFrame, col: str) -> list:
    return [None if v is None or pd.isna(v) else float(v) for v in g[col]] if col in g else []


def summarise(records: list[dict]) -> pd.DataFrame:
    records = store.newest([r for r in records if r])
    rows = [record_row(r) for r in records]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    df["options"] = options(records)
    out = []
    for key, g in df.groupby(GROUP, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(GROUP, key))
        diverged = int((g["status"] == "diverged").sum())
        row.update({c: _first(g[c]) for c in ("num_steps", "eval_num_steps", "lag", "eval_lag")})
        row.update(n_params=g["n_params"].dropna().iloc[0] if g["n_params"].notna().any() else np.nan,
                   seeds=len(ok), failed=len(g) - len(ok) - diverged, diverged=diverged,
                   stale=int(g["stale"].sum()), metric=g["metric"].dropna().iloc[0]
                   if g["metric"].notna().any() else "", chance=_mean(g["chance"].dropna()),
                   threads=g["threads"].iloc[0], device=g["device"].iloc[0],
                   tuned=next((t for t in g["tuned"] if t), ""), concurrent=g["concurrent"].max())
        if len(ok):
            row["score_mean"], row["score_ci_low"], row["score_ci_high"] = stats.mean_ci(
                ok["score"], bounds=stats.metric_range(row["metric"]))
            row["score_std"] = float(ok["score"].std(ddof=1)) if len(ok) > 1 else np.nan
            row["scores"] = list(ok["score"])
            row["higher_is_better"] = bool(ok["higher_is_better"].iloc[0])
            threshold = ok["solved_threshold"].iloc[0]
            if threshold is not None and not pd.isna(threshold):
                row["solved_threshold"] = threshold
                row["solved_frac"] = float(ok["solved"].astype(bool).mean())
                row["solved_ci_low"], row["solved_ci_high"] = stats.clopper_pearson(
                    int(ok["solved"].astype(bool).sum()), len(ok))
                # over the seeds that solved it (the solved fraction says how many did)
                row["sequences_to_solve_median"] = stats.median_or_nan(ok.loc[ok["solved"].astype(bool),
                                                                              "sequences_to_solve"])
            for col in SPREAD:
                if col in ok:
                    row[col], row[col + "_min"], row[col + "_max"] = stats.median_range(ok[col])
            for col in MEDIAN:
                if col in ok:
                    row[col] = stats.median_range(ok[col])[0]
            row["grad_cosine_recurrent_seeds"] = _per_seed(ok, "grad_cosine_recurrent")
            row["grad_cosine_recurrent_own_seeds"] = _per_seed(ok, "grad_cosine_recurrent_own")
            row["fidelity_seeds"] = int(pd.to_numeric(ok.get("exact_grad_norm"), errors="coerce").notna().sum())
            solved = [bool(v) for v in ok.get("reference_solved", []) if v is not None and not pd.isna(v)]
            row["reference_solved"] = float(np.mean(solved)) if solved else np.nan
            row["reference"] = ",".join(sorted({v for v in ok.get("reference", []) if isinstance(v, str)}))
            for col in ("time_ms_per_step", "time_ms_per_update"):   # a spread, not a mean of medians
                values = pd.to_numeric(ok[col], errors="coerce") if col in ok else pd.Series([np.nan])
                # like a mean, the spread never silently leaves out a seed that lacks the figure
                row[col], row[col + "_min"], row[col + "_max"] = (stats.median_range(values)
                                                                  if np.isfinite(values).all() else (np.nan,) * 3)
            for col in COLUMNS:
                if col not in row and col in ok:
                    row[col] = _mean(ok[col])
        out.append(row)
    table = pd.DataFrame(out)
    # rows of one task and horizon together (the run list puts every reference trajectory first),
    # tasks in the order they came, methods in run order within each group
    first = {task: i for i, task in reversed(list(enumerate(table["task"])))}
    table = table.assign(_task=table["task"].map(first)).sort_values(
        ["_task", "seq_len", "eval_seq_len"], kind="stable").drop(columns="_task").reset_index(drop=True)
    compare_with_best(table)
    return table.reindex(columns=COLUMNS)


def compare_with_best(table: pd.DataFrame, alpha: float = stats.ALPHA) -> None:
    """The `verdict` of every row among the rows of the same task, horizon and model (best, tied,
    worse or "no test"), with Welch's p against the group's top row and its Holm adjustment
    (stats.verdicts)."""
    for col in ("verdict", "p_vs_top", "p_holm", "no_test_reason"):
        table[col] = None
    if "scores" not in table:
        return
    for _, g in table.groupby(PEERS, sort=False, dropna=False):
        scores = [s if isinstance(s, list) else [] for s in g["scores"]]
        higher = g["higher_is_better"].dropna()
        found = stats.verdicts(scores, bool(higher.iloc[0]) if len(higher) else True, alpha)
        for i, v in zip(g.index, found):
            table.at[i, "verdict"], table.at[i, "p_vs_top"], table.at[i, "p_holm"] = v.verdict, v.p_value, v.p_holm
            table.at[i, "no_test_reason"] = v.reason if v.verdict == "no test" else None


# --- formatting: the CSV keeps every raw number; the tables show these ---------------------------
def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _num(v, fmt="{:.3f}") -> str:
    return "" if _missing(v) else fmt.format(v)


def _sig(v, digits: int = 3) -> str:
    """Fixed-point with at least `digits` significant digits: 171, 9.46, 0.0123."""
    if _missing(v):
        return ""
    if v == 0 or not np.isfinite(v):
        return f"{v:.0f}" if v == 0 else str(v)
    return f"{v:.{max(0, digits - 1 - int(np.floor(np.log10(abs(v)))))}f}"


# scores in [0, 1] or a few bits: three decimals; errors spanning decades: three significant digits
SCORE_FORMATS = {"accuracy": "{:.3f}", "bits": "{:.3f}"}


def score_text(v, metric) -> str:
    return _num(v, SCORE_FORMATS.get(metric, "{:#.3g}"))


def _p(p) -> str:
    return "" if _missing(p) else "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _spread(mid, low, high, fmt=_sig) -> str:
    """median (min–max) over seeds; the median alone when the seeds agree or there is one."""
    text = fmt(mid)
    if text and not _missing(low) and not _missing(high) and fmt(low) != fmt(high):
        text += f" ({fmt(low)}–{fmt(high)})"
    return text


BYTE_UNITS = [("B", 1), ("KiB", 1024), ("MiB", 1024 ** 2), ("GiB", 1024 ** 3)]


def _byte_unit(values) -> tuple[str, int]:
    """One unit for a whole column, from its largest value."""
    values = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").dropna()
    top = values.abs().max() if len(values) else 0
    return next(((u, d) for u, d in reversed(BYTE_UNITS) if top >= d), BYTE_UNITS[0])


def _bytes(v) -> str:
    """Bytes in the unit that suits this one value (figure ticks)."""
    if _missing(v):
        return ""
    unit, div = _byte_unit([v])
    return f"{v / div:.0f} {unit}" if unit == "B" else f"{v / div:.1f} {unit}"


def _score(r) -> str:
    """Mean with its interval from 3 or more seeds; below that, the seeds' own values."""
    metric = r["metric"]
    text = score_text(r["score_mean"], metric)
    if not text:
        return ""
    if not _missing(r["score_ci_low"]):
        return f"{text} [{score_text(r['score_ci_low'], metric)}, {score_text(r['score_ci_high'], metric)}]"
    scores = r.get("scores") if isinstance(r.get("scores"), list) else []
    if len(scores) == 1:
        return f"{text} (1 seed)"
    if scores:
        return f"{text} (seeds: {', '.join(score_text(s, metric) for s in scores)})"
    return text


def _verdict(r) -> str:
    v = r.get("verdict")
    if _missing(v):
        return ""
    return f"{v} ({_p(r['p_holm'])})" if v in ("tied", "worse") and not _missing(r.get("p_holm")) else v


def _solved(r) -> str:
    if _missing(r["solved_frac"]) or not r["seeds"]:
        return ""
    text = f"{round(r['solved_frac'] * r['seeds'])}/{r['seeds']}"
    if not _missing(r.get("solved_ci_low")):
        text += f" [{r['solved_ci_low']:.3f}, {r['solved_ci_high']:.3f}]"
    return text


def _steps(a, b) -> str:
    """A step count, `a→b` when evaluation uses a different horizon."""
    if _missing(a):
        return ""
    return f"{int(a)}" if _missing(b) or b == a else f"{int(a)}→{int(b)}"


def _fidelity(r, col, fmt) -> str:
    """A fidelity figure; median (min–max) over seeds where the table carries the spread."""
    return _spread(r.get(col), r.get(col + "_min"), r.get(col + "_max"), fmt)


def _seeds(r) -> str:
    apart = [f"{r[k]} {k}" for k in ("failed", "diverged") if r.get(k)]
    return f"{r['seeds']}" + (f" ({', '.join(apart)})" if apart else "")


def display(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader compares, formatted as text (units in the headers); columns empty in
    every row are left out. The CSV keeps every raw number."""
    units = {c: _byte_unit(df[c]) if c in df else ("B", 1) for c in ("saved_bytes", "state_bytes")}
    three = lambda v: _num(v, "{:.3f}")
    sig3 = lambda v: _num(v, "{:#.3g}")
    rows = []
    for _, r in df.iterrows():
        r = r.to_dict()
        bias = ""
        if not _missing(r.get("grad_rel_bias")):
            bias = f"{r['grad_rel_bias']:#.3g} ± {r['grad_rel_bias_se']:#.3g}"
        diverged = r.get("diverged")
        rows.append({
            "method": r["method"] + (f"[{r['params']}]" if isinstance(r["params"], str) and r["params"] else ""),
            "tuned": r["tuned"] if isinstance(r["tuned"], str) else "",
            "task": r["task"],
            "T": _steps(r["seq_len"], r["eval_seq_len"]),
            "L": _steps(r.get("num_steps"), r.get("eval_num_steps")),
            "lag (steps)": _steps(r.get("lag"), r.get("eval_lag")),
            "options": r["options"] if isinstance(r.get("options"), str) else "",
            "cell": f"{r['cell']}-{r['hidden']}",
            "seeds": _seeds(r),
            "score": f"{_score(r)} ({r['metric']})" if _score(r) else "",
            "verdict": _verdict(r),
            "chance": score_text(r["chance"], r["metric"]),
            "solved [95% CI]": _solved(r),
            "seqs to solve": _num(r["sequences_to_solve_median"], "{:.0f}"),
            "ms/step": _spread(r["time_ms_per_step"], r.get("time_ms_per_step_min"), r.get("time_ms_per_step_max")),
            "ms/update": _spread(r["time_ms_per_update"], r.get("time_ms_per_update_min"),
                                 r.get("time_ms_per_update_max")),
            **{f"{name} ({units[col][0]})": _sig(r[col] / units[col][1]) if not _missing(r[col]) else ""
               for name, col in (("saved", "saved_bytes"), ("state", "state_bytes"))},
            "cos": _fidelity(r, "grad_cosine", three),
            "cos rec": _fidelity(r, "grad_cosine_recurrent", three),
            "rel err": _fidelity(r, "grad_rel_error", sig3),
            "norm ratio": _fidelity(r, "grad_norm_ratio", sig3),
            "norm g*": _fidelity(r, "exact_grad_norm", sig3),
            "fid. ref": r.get("reference") if isinstance(r.get("reference"), str) else "",
            "cos rec own": _fidelity(r, "grad_cosine_recurrent_own", three),
            "rel bias": bias,
            "rel var": sig3(r.get("grad_rel_variance")),
            "clipped": _num(r.get("clipped_fraction"), "{:.0%}"),
        })
    shown = pd.DataFrame(rows)   # one "score (metric)" column: a run list may mix accuracy and MSE
    return shown.loc[:, (shown != "").any(axis=0)] if len(shown) else shown


# what each displayed column means; footnote() keeps the sentences of the columns shown
COLUMN_NOTES = {
    "T": "T: the task's horizon (`a→b`: trained at a, evaluated at b)",
    "L": "L: time steps of a sequence",
    "lag (steps)": "lag: the task's longest dependency, from an input to the step where a target needs it",
    "score": ("score: final test score on held-out batches at the evaluation horizon, mean over seeds with its "
              f"{stats.LEVEL:.0%} Student-t interval [low, high] cut to the metric's range (accuracy in [0, 1], "
              "errors >= 0; the cut keeps the coverage, as the true mean lies in that range); with fewer than "
              f"{stats.MIN_SEEDS} seeds no interval, the seeds' own scores instead"),
    "verdict": ("verdict: among the rows of the same task, horizon and model, each row's seeds are compared with "
                "those of the row with the best mean (the top) by Welch's two-sided t-test, p-values "
                f"Holm-adjusted over the group's comparisons (shown); worse: adjusted p < {stats.ALPHA}; tied: "
                "not significantly different from the top; the top is best only when every other row is worse, "
                "tied when some row is tied with it"),
    "chance": "chance: the score of guessing",
    "solved [95% CI]": ("solved: seeds whose final score reaches the task's threshold ({thresholds}), with the "
                        f"{stats.LEVEL:.0%} Clopper-Pearson interval of the fraction"),
    "seqs to solve": ("seqs to solve: median, over the seeds that solved it, of the training sequences seen at the "
                      "first evaluation that reached the threshold"),
    "ms/step": ("ms/step: median over seeds of each run's median wall-clock per training step (one batch of "
                "whole sequences with every update on it) after warm-up, (min–max over seeds)"),
    "ms/update": "ms/update: the same per parameter update",
    "saved": "saved: peak bytes held by autograd for backward during one training step, mean over seeds",
    "state": "state: the method's own carried state outside autograd (influence matrices, stored carries)",
    "cos": "cos: cosine of the method's gradient with the exact one, all parameters",
    "cos rec": "cos rec: the same over the recurrent cell's parameters (every method gets the readout's right)",
    "rel err": "rel err: |g - g*| / |g*|",
    "norm ratio": "norm ratio: |g| / |g*|, the estimate's norm over the exact gradient's",
    "rel bias": ("rel bias, rel var: stochastic methods, debiased relative bias ± its bootstrap standard error, "
                 "and relative variance over the draws"),
    "clipped": "clipped: fraction of updates whose gradient norm was clipped in training",
    "options": "options: training options in which the rows differ",
    "seeds": ("seeds: finished runs in the score; failed (a fault) and diverged (a non-finite loss, score or "
              "gradient: a result) runs are counted apart and left out of the score"),
    "norm g*": "norm g*: |g*|, the exact gradient's norm",
    "cos rec own": "cos rec own: cos rec at the run's own parameters at the end of training (secondary)",
}
FIDELITY_COLUMNS = ("cos", "cos rec", "rel err", "norm ratio", "norm g*", "rel bias")


def _fidelity_note(df: pd.DataFrame, shown_columns) -> str:
    """Where the fidelity figures were measured, and against what."""
    if not any(c in shown_columns for c in FIDELITY_COLUMNS):
        return ""
    spread = "median over seeds (min–max)" if "grad_cosine_recurrent_min" in df else "mean over seeds"
    if "fid. ref" in shown_columns:
        return ("gradient fidelity at the last checkpoint, " + spread + ", measured at the shared parameters of the "
                "reference trajectory named in 'fid. ref' (full BPTT through the method's own network, trained "
                "once per configuration and seed) against its exact gradient, before clipping")
    return ("gradient fidelity at the end of training, " + spread + ", at each run's own parameters against full "
            "BPTT through the same network (these records name no shared reference trajectory), before clipping")


def footnote(df: pd.DataFrame) -> str:
    """The meaning of every column shown (and only those), the thresholds in use, and the reasons
    of the rows that could not be tested."""
    shown = list(display(df).columns) if len(df) else []
    thresholds = ", ".join(f"{task.split('[')[0]}: {metric} {'>=' if hib else '<='} {t:g}"
                           for task, metric, hib, t in
                           df.dropna(subset=["solved_threshold"])
                           [["task", "metric", "higher_is_better", "solved_threshold"]].drop_duplicates().itertuples(index=False))
    parts = []
    for col in shown:
        note = COLUMN_NOTES.get(col.split(" (")[0] if col.split(" (")[0] in ("saved", "state") else col)
        if note:
            parts.append(note.replace("{thresholds}", thresholds or "none declared"))
    fidelity = _fidelity_note(df, shown)
    if fidelity:
        parts.append(fidelity)
    text = "; ".join(parts) + "." if parts else ""
    untested = df[df["verdict"] == "no test"] if "verdict" in df else df.iloc[:0]
    if "verdict" in shown and len(untested):
        reasons = "; ".join(f"{reason} ({n} row{'s' if n > 1 else ''})"
                            for reason, n in untested["no_test_reason"].value_counts().items())
        text += f" no test: {reasons}."
    return text


PARALLEL_NOTE = ("Warning: some runs were timed while up to {n} runs ran at the same time (joblib or SLURM "
                 "executor); their ms/step and ms/update are not comparable with times measured alone. "
                 "Time with --executor local (one run after another) to compare speed.")


STALE_NOTE = ("{n} older records of runs recorded again (the same method, hyperparameters, task, model, training "
              "options and seed, e.g. after an edit of the method) were ignored: each run counts once, its newest "
              "record.")
DIVERGED_NOTE = ("{n} runs diverged (a non-finite loss, score or gradient; `diverged` in summary.csv): they are "
                 "counted apart from the seeds and left out of the scores.")


DAMAGED_NOTE = ("{n} damaged record{s} skipped (not valid records of this version; a warning named each file); "
                "rerunning the command that made them redoes those runs.")


def notes(df: pd.DataFrame) -> list[str]:
    """Footnotes that depend on the records: timings measured in parallel, records ignored, divergence,
    damaged records skipped (report.write sets df.attrs["damaged"])."""
    out = []
    n = pd.to_numeric(df.get("concurrent", pd.Series(dtype=float)), errors="coerce").max()
    if n == n and n > 1:
        out.append(PARALLEL_NOTE.format(n=int(n)))
    for col, note in (("stale", STALE_NOTE), ("diverged", DIVERGED_NOTE)):
        total = int(pd.to_numeric(df.get(col, pd.Series(dtype=float)), errors="coerce").fillna(0).sum())
        if total:
            out.append(note.format(n=total))
    damaged = df.attrs.get("damaged", 0)
    if damaged:
        out.append(DAMAGED_NOTE.format(n=damaged, s="s" if damaged > 1 else ""))
    return out


def table_text(shown: pd.DataFrame, tablefmt: str = "github") -> str:
    """tabulate with the cells as written: numparse would turn "1.000" into "1" beside "0.874"."""
    return tabulate(shown, headers="keys", tablefmt=tablefmt, showindex=False, disable_numparse=True)


def write(df: pd.DataFrame, out: Path) -> str:
    out = Path(out)
    stale = int(pd.to_numeric(df.get("stale", pd.Series(dtype=float)), errors="coerce").fillna(0).sum())
    if stale:
        print(f"warning: {STALE_NOTE.format(n=stale)}", file=sys.stderr)
    extra = "".join("\n\n" + note for note in notes(df))
    shown = display(df) if len(df) else pd.DataFrame()
    md = table_text(shown)
    write_atomic(out / "summary.csv", df.to_csv(index=False))
    write_atomic(out / "summary.md", md + "\n\n" + footnote(df) + extra + "\n")
    write_atomic(out / "summary.tex", table_text(shown, "latex_booktabs") + "\n")
    return md + extra


PER_SEED = ["method", "task", "seq_len", "cell", "hidden", "seed", "status", "metric", "final", "final_loss", "best",
            "best_at", "peak_loss", "peak_loss_at"]


def per_seed(records: list[dict]) -> pd.DataFrame:
    """One row per run: where each seed ended, the best it reached and its worst held-out loss on the
    way, so a plateau exit, a collapse after a good score or a loss spike shows seed by seed (the
    comparison table averages them away)."""
    rows = []
    for r in records:
        row = record_row(r)
        out = {"method": r.get("method_label") or row["method"],
               **{k: row[k] for k in ("task", "seq_len", "cell", "hidden", "seed", "status", "metric")}}
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
                 "training began, and the training sequences seen by then (best at); peak loss: the largest "
                 "held-out loss at any such evaluation, and the training sequences seen by then (peak loss at).")


def per_seed_markdown(df: pd.DataFrame) -> str:
    loss = lambda v: _num(v, "{:#.3g}")
    count = lambda v: _num(v, "{:.0f}")
    shown = df.assign(final=[score_text(v, m) for v, m in zip(df["final"], df["metric"])],
                      best=[score_text(v, m) for v, m in zip(df["best"], df["metric"])],
                      final_loss=[loss(v) for v in df["final_loss"]], peak_loss=[loss(v) for v in df["peak_loss"]],
                      best_at=[count(v) for v in df["best_at"]], peak_loss_at=[count(v) for v in df["peak_loss_at"]],
                      seq_len=[str(v) for v in df["seq_len"]], seed=[str(v) for v in df["seed"]],
                      cell=[f"{c}-{h}" for c, h in zip(df["cell"], df["hidden"])])
    shown = shown.drop(columns="hidden").rename(columns={
        "seq_len": "T", "final_loss": "final loss", "best_at": "best at (seqs)", "peak_loss": "peak loss",
        "peak_loss_at": "peak loss at (seqs)"})
    return table_text(shown) + "\n\n" + PER_SEED_NOTE

"""The results page: summary tables, figures and `report.md`, rebuilt from run records alone.

    python -m harness.report DIR     # reads DIR/runs/*.json, writes DIR/report.md, DIR/figures/*.png

Records from several machines can be copied into one DIR/runs and re-plotted without training.
Every figure shows each seed (thin lines or small points) as well as the mean; a 95% band only
from 3 or more seeds, cut to what the quantity can take (accuracy in [0, 1], errors >= 0, cosines
in [-1, 1]). A method keeps its colour and marker in every report (harness/palette.py); its
variants share the colour and differ in line style, so the figures read in grayscale.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402
from scipy import stats as sps  # noqa: E402

from . import palette, stats, store, summary  # noqa: E402
from .store import write_atomic  # noqa: E402

FIGURES = "figures"
X_AXES = {"sequences": "training sequences seen", "updates": "parameter updates",
          "wall_s": "wall-clock training time (s)"}
COSTS = {"time_ms_per_step": "time per training step (ms)", "saved_bytes": "saved for backward (bytes)"}
COSINE = "cosine with exact gradient\n(recurrent parameters)"
MIN_SEEDS_FOR_BAND = stats.MIN_SEEDS   # a t band over two seeds spans the whole axis (t = 12.7): seeds alone
LOG_X_SPREAD = 10        # log x when the methods' ranges on x differ this much
# hyperparameters that name a truncation length, in order of precedence (tbptt's k2 is how far its
# gradient reaches back, k its default; sab's k_trunc); read from the record, never from the code
TRUNCATION_KEYS = ("k2", "k_trunc", "k")


# --- what the figures are built from ---------------------------------------------------------
def ok_runs(records: list[dict]) -> list[dict]:
    return [r for r in records if r and r.get("status") == "ok"]


def method_label(r: dict) -> str:
    return r.get("method_label") or r["config"]["method"]


def task_label(r: dict) -> str:
    cfg = r["config"]
    task = cfg["task"] + (f"[{','.join(f'{k}={v}' for k, v in cfg['task_params'].items())}]"
                          if cfg.get("task_params") else "")
    horizon = f"T={cfg['seq_len']}" + (f"→{cfg['eval_seq_len']}" if cfg.get("eval_seq_len") not in
                                       (None, cfg["seq_len"]) else "")
    return f"{task} {horizon}, {cfg['cell']}-{cfg['hidden']}"


def metric_label(r: dict) -> str:
    return "test accuracy (fraction)" if r.get("metric") == "accuracy" else f"test {str(r.get('metric')).upper()}"


def styles(labels) -> dict:
    """label -> matplotlib keyword arguments: the method's fixed colour, and a line style and marker
    per variant (harness/palette.py)."""
    return palette.styles(labels)


def by(records, key) -> dict:
    groups = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    return dict(groups)


def truncation(r: dict) -> tuple[str, int] | None:
    """(name, value) of the truncation length of an approximate method's run, from its
    hyperparameters as recorded (`config.method_params`, then `method_defaults` where the record
    carries them); None for exact methods and where the record names none."""
    if r.get("gradient_kind") == "exact":
        return None
    params = {**(r.get("method_defaults") or {}), **r["config"]["method_params"]}
    for key in TRUNCATION_KEYS:
        try:
            value = int(params[key]) if params.get(key) is not None else None
        except (TypeError, ValueError):
            value = None
        if value:
            return key, value
    return None


MAX_COLUMNS = 3
REFERENCE_LINES = {"chance", "exact", "task's lag"}   # legend entries that are not methods
LABEL_BOX = {"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1}   # text over lines stays legible


def _panels(n: int, width: float = 4.6, height: float = 3.4):
    """A grid of at most MAX_COLUMNS columns; panels beyond n are hidden. Returns (fig, flat axes)."""
    n = max(n, 1)
    cols = min(n, MAX_COLUMNS)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 2.2, height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


def _task_panels(records: list[dict], runs: list[dict]):
    """(fig, axes, runs by task, styles): one panel per task; styles from every finished run, so a
    method's variants look the same in every figure of a report."""
    panels = by(runs, task_label)
    fig, axes = _panels(len(panels))
    return fig, axes, panels, styles(method_label(r) for r in ok_runs(records))


def _fit_to_lines(ax, bounds: tuple[float, float] = stats.UNBOUNDED) -> None:
    """y limits from the plotted lines (seeds, means, reference lines), not from the bands, and
    never far beyond what the quantity can take (`bounds`)."""
    ys = [np.asarray(line.get_ydata(), float) for line in ax.get_lines()
          if line.get_transform() == ax.transData or line.get_label() in ("chance", "exact")]
    ys = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    if ax.get_yscale() == "log":
        ys = ys[ys > 0]
    if not len(ys):
        return
    lo, hi = ys.min(), ys.max()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo / 1.6, hi * 1.6)
        return
    pad = max(0.06 * (hi - lo), 0.02 * max(abs(hi), abs(lo), 1e-3))   # a near-constant curve gets room
    span = bounds[1] - bounds[0] if np.isfinite(bounds[1] - bounds[0]) else np.inf
    edge = 0.03 * span if np.isfinite(span) else 0.0
    ax.set_ylim(max(lo - pad, bounds[0] - edge), min(hi + pad, bounds[1] + edge))


def _legend(fig, axes, extra: dict | None = None) -> None:
    """One legend for the figure: the methods in a fixed order (harness/palette.py), then the
    reference lines (chance, exact, ...) and `extra` entries."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    labels.sort(key=lambda lab: (0, palette.rank(lab)) if lab not in REFERENCE_LINES else (1, ()))
    for lab, h in (extra or {}).items():
        handles[lab] = h
        labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside right upper", frameon=False)


def _band(ax, x, table, st, label, markevery=None, bounds=stats.UNBOUNDED, geometric=False):
    """Thin per-seed lines (stronger with fewer than 3 seeds: they are then all there is), the mean
    (labelled; geometric with `geometric`) and, from 3 seeds, its 95% band cut to `bounds`."""
    table = np.atleast_2d(np.asarray(table, float))
    few = len(table) < MIN_SEEDS_FOR_BAND
    for row in table:
        ax.plot(x, row, color=st["color"], linestyle=st["linestyle"], linewidth=0.9 if few else 0.7,
                alpha=0.6 if few else 0.35, label="_seed")
    if geometric:
        mean, low, high = stats.geometric_ci_columns(table)
    else:
        mean, low, high = stats.mean_ci_columns(table, bounds=bounds)
    ax.plot(x, mean, label=label, linewidth=1.8, markersize=5, markevery=markevery, **st)
    if not few and np.isfinite(low).any():
        ax.fill_between(x, low, high, color=st["color"], alpha=0.18, linewidth=0, label="_band")


def _common_grid(xs: list[np.ndarray], points: int = 40, log: bool = False) -> tuple[np.ndarray, bool]:
    """The seeds' own x when they agree, else an even grid (even in log x with `log`) over the
    range every seed covers."""
    if all(len(x) == len(xs[0]) and np.allclose(x, xs[0]) for x in xs):
        return xs[0], False
    lo, hi = max(x[0] for x in xs), min(x[-1] for x in xs)
    return (np.geomspace(lo, hi, points) if log else np.linspace(lo, hi, points)), True


def _count(v) -> str:
    """Tick text of a count or a plain number: 150k, 2.5M, 0.001."""
    if v == 0:
        return "0"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def _linear_ticks(ax, which: str = "x") -> None:
    """At most six ticks, written short (150k, not 150000: long labels ran together)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _count(v)))


def _log_subs(span: float, in_bytes: bool) -> tuple:
    if in_bytes:
        return (1, 1.25, 1.5, 1.75) if span < 1.5 else (1, 1.5) if span < 4 else (1.0,)
    return (1, 1.5, 2, 3, 5, 7) if span < 1.0 else (1, 2, 5) if span < 2.5 else (1.0,)


def _log_ticks(ax, which: str = "y", in_bytes: bool = False, snap: bool = False) -> None:
    """Readable log-axis ticks, no minor labels; call once the limits are final. Plain numbers at
    1-2-5 steps (finer over less than a decade), or bytes at powers of two (and halves between).
    `snap`: widen the limits to the ticks just outside the data, so no point lies beyond the
    outermost ticks."""
    get, set_ = (ax.get_ylim, ax.set_ylim) if which == "y" else (ax.get_xlim, ax.set_xlim)
    lo, hi = get()
    base = 2 if in_bytes else 10
    span = np.log(hi / lo) / np.log(base) if lo > 0 and hi > lo else 10.0
    subs = _log_subs(span, in_bytes)
    if snap and lo > 0 and hi > lo:
        exps = range(int(np.floor(np.log(lo) / np.log(base))) - 1, int(np.ceil(np.log(hi) / np.log(base))) + 2)
        marks = sorted(s * float(base) ** e for e in exps for s in subs)
        data_lo, data_hi = lo * 1.15, hi / 1.15   # the limits carry a margin; snap the data's own range
        low = max([m for m in marks if m <= data_lo * (1 + 1e-9)], default=lo)
        high = min([m for m in marks if m >= data_hi * (1 - 1e-9)], default=hi)
        set_(low / 1.1, high * 1.1)
        lo, hi = get()
        span = np.log(hi / lo) / np.log(base)
        subs = _log_subs(span, in_bytes)
    fmt = (lambda v: summary._bytes(v).replace(".0 ", " ")) if in_bytes else _count
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(ticker.LogLocator(base=base, subs=subs, numticks=6 if in_bytes else 8))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_locator(ticker.NullLocator())


def _log_x_wanted(ends: list[float]) -> bool:
    """Log x when the methods' last x values differ by LOG_X_SPREAD or more (tbptt's updates)."""
    ends = [e for e in ends if e > 0]
    return len(ends) > 1 and max(ends) >= LOG_X_SPREAD * min(ends)


# --- figures -----------------------------------------------------------------------------------
def plot_learning_curves(records: list[dict], x: str = "sequences"):
    """Score against `x` (sequences, updates or wall_s), one panel per task, one line per method
    (mean, 95% band cut to the metric's range, per-seed thin lines), chance as a horizontal line;
    log x where the methods' ranges differ tenfold (the evaluation at 0 is then left out)."""
    runs = ok_runs(records)
    fig, axes, panels, st = _task_panels(records, runs)
    for ax, (title, group) in zip(axes, panels.items()):
        methods = by(group, method_label)
        log_x = _log_x_wanted([max(c[x] for c in r["curve"]) for r in group])
        bounds = stats.metric_range(group[0].get("metric"))
        for label, rs in methods.items():
            xs = [np.array([c[x] for c in r["curve"]], float) for r in rs]
            ys = [np.array([np.nan if c["score"] is None else c["score"] for c in r["curve"]], float) for r in rs]
            if log_x:
                keep = [xi > 0 for xi in xs]
                xs, ys = [xi[k] for xi, k in zip(xs, keep)], [yi[k] for yi, k in zip(ys, keep)]
            if not all(len(xi) for xi in xs):
                continue
            grid, interpolated = _common_grid(xs, log=log_x)
            table = [np.interp(grid, xi, yi) if interpolated else yi for xi, yi in zip(xs, ys)]
            _band(ax, grid, table, st[label], label, markevery=max(1, len(grid) // 8), bounds=bounds)
        if group[0].get("chance") is not None:   # optional in the schema
            ax.axhline(group[0]["chance"], color="0.3", linestyle=(0, (1, 2)), linewidth=1.2, label="chance")
        if not group[0].get("higher_is_better", True):
            ax.set_yscale("log")
        ax.set(title=title, xlabel=X_AXES[x] + (" (log)" if log_x else ""), ylabel=metric_label(group[0]))
        _fit_to_lines(ax, bounds)
        if log_x:
            ax.set_xscale("log")
            _log_ticks(ax, "x")
        else:
            _linear_ticks(ax, "x")
        if ax.get_yscale() == "log":
            _log_ticks(ax)
    _legend(fig, axes)
    return fig


def fidelity_runs(records: list[dict]) -> list[dict]:
    return [r for r in ok_runs(records) if r.get("fidelity")]


def shared(r: dict) -> bool:
    """Whether the record's `fidelity` was measured at a reference trajectory's parameters (newer
    records) rather than at the run's own (older records, which name no reference)."""
    info = r.get("fidelity_reference") or {}
    return bool(info) and not info.get("pending")


SOLVED_MARK = {"markerfacecolor": None}          # reference had solved the task there: filled
UNSOLVED_MARK = {"markerfacecolor": "white"}     # not (yet) solved: hollow


def plot_fidelity(records: list[dict]):
    """Cosine of each method's gradient with the exact one (recurrent parameters) at the fidelity
    checkpoints, against training sequences seen; per-seed points filled where the reference
    trajectory had solved the task at that checkpoint, hollow where it had not; band in [-1, 1]."""
    runs = fidelity_runs(records)
    fig, axes, panels, st = _task_panels(records, runs)
    marks_solved = False
    for ax, (title, group) in zip(axes, panels.items()):
        for label, rs in by(group, method_label).items():
            xs = [np.array([f["step"] * r["config"]["batch"] for f in r["fidelity"]], float) for r in rs]
            ys = [np.array([np.nan if f.get("cosine_recurrent") is None else f["cosine_recurrent"]
                            for f in r["fidelity"]], float) for r in rs]
            solved = [[f.get("reference_solved") for f in r["fidelity"]] for r in rs]
            grid, interpolated = _common_grid(xs, points=len(xs[0]))
            table = [np.interp(grid, xi, yi) if interpolated else yi for xi, yi in zip(xs, ys)]
            for xi, yi, si in zip(xs, ys, solved):
                for state in (True, False, None):
                    pick = np.array([s is state for s in si])
                    if not pick.any():
                        continue
                    marks_solved |= state is not None
                    ax.plot(xi[pick], yi[pick], linestyle="none", marker=st[label]["marker"], color=st[label]["color"],
                            alpha=0.6, markersize=5, label="_seed", markeredgewidth=1.0,
                            **(UNSOLVED_MARK if state is False else {}))
            _band(ax, grid, table, st[label], label, bounds=stats.COSINE_RANGE)
        ax.axhline(1.0, color="0.3", linestyle=(0, (1, 2)), linewidth=1.0, label="exact")
        where = "shared parameters" if all(shared(r) for r in group) else "own parameters"
        ax.set(title=title, xlabel=X_AXES["sequences"], ylabel=f"{COSINE}\nat {where}")
        _fit_to_lines(ax, stats.COSINE_RANGE)
        _linear_ticks(ax, "x")
    extra = {}
    if marks_solved:
        extra = {"reference solved": plt.Line2D([], [], color="0.3", marker="o", linestyle="none"),
                 "not solved": plt.Line2D([], [], color="0.3", marker="o", linestyle="none", markerfacecolor="white")}
    _legend(fig, axes, extra)
    return fig


def plot_costs(records: list[dict]):
    """Per task, time per training step (left) and memory (right: bytes saved for backward, filled,
    and the method's carried state outside autograd, hollow) per method, log scale; small points:
    seeds, large: median. Methods are rows, so their names never collide."""
    runs = ok_runs(records)
    panels = by(runs, task_label)
    st = styles(method_label(r) for r in runs)
    longest = max((len(method_label(r)) for r in runs), default=4)
    n_methods = max((len(by(g, method_label)) for g in panels.values()), default=1)
    fig, axes = plt.subplots(len(panels), 2, figsize=(9.0 + 0.06 * longest, (0.45 * n_methods + 1.3) * len(panels)),
                             squeeze=False, layout="constrained")
    for row, (title, group) in enumerate(panels.items()):
        methods = by(group, method_label)
        names = list(methods)[::-1]   # the first method on top
        time_ax, mem_ax = axes[row]
        for y, label in enumerate(names):
            values = {key: np.array([np.nan if summary.record_row(r).get(key) is None else summary.record_row(r)[key]
                                     for r in methods[label]], float)
                      for key in ("time_ms_per_step", "saved_bytes", "state_bytes")}
            for ax, key, dy, face in ((time_ax, "time_ms_per_step", 0.0, None), (mem_ax, "saved_bytes", -0.17, None),
                                      (mem_ax, "state_bytes", 0.17, "white")):
                v = values[key]
                positive = v[np.isfinite(v) & (v > 0)]
                ax.plot(positive, np.full(len(positive), y + dy), linestyle="none", marker=st[label]["marker"],
                        color=st[label]["color"], alpha=0.45, markersize=4, label="_seed")
                if len(positive):
                    ax.plot([np.median(positive)], [y + dy], linestyle="none", marker=st[label]["marker"],
                            markersize=9, color=st[label]["color"], markeredgewidth=1.8,
                            markerfacecolor=face or st[label]["color"], label="_median")
                elif np.isfinite(v).any():   # exactly zero: no place on a log axis; say it in words
                    ax.text(0.01, y + dy, "0 B" if "bytes" in key else "0", color=st[label]["color"], fontsize=8,
                            va="center", ha="left", transform=blended_transform_factory(ax.transAxes, ax.transData))
        for ax, xlabel, in_bytes in ((time_ax, COSTS["time_ms_per_step"], False),
                                     (mem_ax, "bytes per training step", True)):
            ax.set_xscale("log")
            ax.set_yticks(range(len(names)), names)
            ax.set_ylim(-0.6, len(names) - 0.4)
            ax.set_xlabel(xlabel)
            ax.grid(axis="y", visible=False)
            if ax.get_lines():
                xs = np.concatenate([line.get_xdata() for line in ax.get_lines()])
                ax.set_xlim(xs.min() / 1.15, xs.max() * 1.15)
                _log_ticks(ax, "x", in_bytes=in_bytes, snap=True)
        time_ax.set_title(title, loc="left")
        mem_ax.tick_params(labelleft=False)
    legend = {"saved for backward": plt.Line2D([], [], color="0.3", marker="o", linestyle="none"),
              "carried state": plt.Line2D([], [], color="0.3", marker="o", linestyle="none", markerfacecolor="white"),
              "seeds (small), median (large)": plt.Line2D([], [], linestyle="none")}
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=3, frameon=False)
    return fig


def plot_credit_by_lag(records: list[dict]):
    """Geometric mean over seeds of the norm of the gradient reaching the hidden state d steps
    before each loss term, against d, log y, with each seed's line; lags where it is exactly zero
    in every seed are ticked along the bottom; dashed verticals at each truncated method's length,
    a dotted one at the task's dependency lag."""
    runs = [r for r in ok_runs(records) if r.get("credit_by_lag")]
    fig, axes, panels, st = _task_panels(records, runs)
    for ax, (title, group) in zip(axes, panels.items()):
        top = blended_transform_factory(ax.transData, ax.transAxes)
        cuts = defaultdict(set)   # truncation length -> the hyperparameter names that set it
        for label, rs in by(group, method_label).items():
            lag = np.array(rs[0]["credit_by_lag"]["lag"], float)
            table = np.array([[np.nan if v is None else v for v in r["credit_by_lag"]["norm"]] for r in rs], float)
            zero = np.all(table == 0, axis=0)
            _band(ax, lag, np.where(table > 0, table, np.nan), st[label], label,
                  markevery=max(1, len(lag) // 10), geometric=True)
            if zero.any():
                ax.plot(lag[zero], np.full(zero.sum(), 0.02), transform=ax.get_xaxis_transform(), linestyle="none",
                        marker="|", markersize=8, color=st[label]["color"], label="_zero")
            cut = truncation(rs[0])
            if cut is not None and cut[1] <= lag.max():
                ax.axvline(cut[1], color=st[label]["color"], linestyle=(0, (4, 2)), linewidth=1.0, label="_truncation")
                cuts[cut[1]].add(cut[0])
        for value, keys in cuts.items():   # one label per length, however many methods share it
            ax.text(value, 0.98, f"{'/'.join(sorted(keys))}={value} ", transform=top, color="0.25", fontsize=8,
                    va="top", ha="right", rotation=90, bbox=LABEL_BOX)
        lags = {r.get("lag") for r in group} - {None}
        if len(lags) == 1:
            (d,) = lags
            ax.axvline(d, color="0.25", linestyle=(0, (1, 1.5)), linewidth=1.3, label="task's lag")
            ax.text(d, 0.98, f"lag {d} ", transform=top, color="0.25", fontsize=8, va="top", ha="right", rotation=90,
                    bbox=LABEL_BOX)
        ax.set_yscale("log")
        ax.set(title=title, xlabel="lag d (time steps before the loss term)",
               ylabel="$|\\partial L_t / \\partial h_{t-d}|$, geometric mean\n(end of training)")
        _fit_to_lines(ax)
        _log_ticks(ax)
    _legend(fig, axes, {"truncation length": plt.Line2D([], [], color="0.3", linestyle=(0, (4, 2)))}
            if any(truncation(r) for r in runs) else None)
    return fig


def plot_diagnostics(records: list[dict]):
    """The methods' own curves (`point["diagnostics"]`, e.g. SAB's attention entropy) against
    training sequences seen: one panel per task and diagnostic, mean and seeds."""
    runs = [r for r in ok_runs(records) if any(p.get("diagnostics") for p in r.get("curve", []))]
    keys = {(task_label(r), name): None for r in runs for p in r["curve"] for name in (p.get("diagnostics") or {})}
    fig, axes = _panels(len(keys))
    st = styles(method_label(r) for r in ok_runs(records))
    for ax, (title, name) in zip(axes, keys):
        group = [r for r in runs if task_label(r) == title]
        values = np.array([p["diagnostics"][name] for r in group for p in r["curve"]
                           if name in (p.get("diagnostics") or {})], float)
        values = values[np.isfinite(values)]
        # a norm spanning decades (SAB's exact gradient) reads on a log axis, as a geometric mean;
        # a quantity that cannot be negative keeps its band at or above 0
        log = bool(len(values) and values.min() > 0 and values.max() / values.min() > 100)
        bounds = (0.0, np.inf) if len(values) and values.min() >= 0 else stats.UNBOUNDED
        for label, rs in by(group, method_label).items():
            pts = [[p for p in r["curve"] if name in (p.get("diagnostics") or {})] for r in rs]
            if not all(pts):
                continue
            xs = [np.array([p["sequences"] for p in ps], float) for ps in pts]
            ys = [np.array([p["diagnostics"][name] for p in ps], float) for ps in pts]
            grid, interpolated = _common_grid(xs)
            table = [np.interp(grid, xi, yi) if interpolated else yi for xi, yi in zip(xs, ys)]
            _band(ax, grid, table, st[label], label, markevery=max(1, len(grid) // 8), geometric=log, bounds=bounds)
        if log:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)   # 3.8887 + 1e-4 offsets hide a constant
        ax.set(title=title, xlabel=X_AXES["sequences"], ylabel=name.replace("_", " "))
        _fit_to_lines(ax, bounds=bounds)
        _linear_ticks(ax, "x")
    _legend(fig, axes)
    return fig


def method_param(r: dict, key: str):
    """A method hyperparameter of a run, its declared default where the run left it out."""
    params = r["config"]["method_params"]
    if key in params:   # as typed on the command line: "5" is the number 5
        value = params[key]
        for kind in (int, float):
            try:
                return kind(value) if isinstance(value, str) else value
            except ValueError:
                continue
        return value
    # the default stored in the record: reading never imports the method it names (a record
    # written before defaults were stored has none, and report.write says so)
    return (r.get("method_defaults") or {}).get(key)


def varied(records: list[dict]) -> list[tuple[str, str]]:
    """Variables a run list varies within one task and model: ("seq_len", "seq_len") and
    ("method", "name.key") for a numeric method hyperparameter."""
    runs = ok_runs(records)
    found = []
    if any(len({r["config"]["seq_len"] for r in rs}) > 1
           for rs in by(runs, lambda r: (method_label(r), task_label(r).split(" T=")[0])).values()):
        found.append(("seq_len", "seq_len"))
    hyper = set()
    for (name, _), rs in by(runs, lambda r: (r["config"]["method"], task_label(r))).items():
        for k in {k for r in rs for k in r["config"]["method_params"]}:
            values = {method_param(r, k) for r in rs}
            if len(values) > 1 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                hyper.add(f"{name}.{k}")
    return found + [("method", v) for v in sorted(hyper)]


def _value(r: dict, col: str) -> float:
    row = summary.record_row(r)
    if col == "memory_bytes":   # what a step holds: saved for backward plus carried state
        parts = [row.get("saved_bytes"), row.get("state_bytes")]
        return float(sum(p for p in parts if p is not None)) if parts[0] is not None else np.nan
    if col == "solved":
        return np.nan if row.get("solved") is None else float(row["solved"])
    v = row.get(col)
    return np.nan if v is None else float(v)


def _steps_of(r: dict) -> int:
    return r.get("num_steps") or r["config"]["seq_len"]


def _slope(xs, ys) -> float | None:
    """Slope of log y on log x (scipy.stats.linregress) over the positive points; None with fewer
    than two distinct x."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    if len(np.unique(xs[keep])) < 2:
        return None
    return float(sps.linregress(np.log(xs[keep]), np.log(ys[keep])).slope)


def _write_slopes(ax, slopes: list[tuple[str, float, dict]]) -> None:
    for i, (label, slope, st) in enumerate(slopes):
        ax.text(0.02, 0.97 - 0.09 * i, f"{label}: slope {slope:.2f}", transform=ax.transAxes, color=st["color"],
                fontsize=8, va="top", ha="left", bbox=LABEL_BOX)


SEQ_LEN_PANELS = {"score": None, "solved": "solved fraction (95% Clopper-Pearson)",
                  "time_ms_per_step": COSTS["time_ms_per_step"] + "\nlog-log, slope fitted",
                  "memory_bytes": "saved for backward + carried state\n(bytes; log-log, slope fitted)",
                  "grad_cosine_recurrent": COSINE}


def plot_scaling_seq_len(records: list[dict]):
    """Against the horizon, one row per task and model: the score (mean, seeds, 95% interval from 3
    seeds), the solved fraction with its Clopper-Pearson interval, and on log-log axes against the
    steps L of a sequence, time per step and memory (saved + state) with the slope of a line fitted
    to the logs of the medians, and the cosine when measured."""
    runs = ok_runs(records)
    st = styles(method_label(r) for r in runs)
    rows = by(runs, lambda r: task_label(r).replace(f" T={r['config']['seq_len']}", ""))
    cols = [c for c in SEQ_LEN_PANELS
            if (c != "solved" or any(r.get("solved_threshold") is not None for r in runs))
            and (c != "grad_cosine_recurrent" or any(r.get("fidelity") for r in runs))]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.9 * len(cols) + 2.2, 3.3 * len(rows)),
                             squeeze=False, layout="constrained")
    for i, (title, group) in enumerate(rows.items()):
        bounds = stats.metric_range(group[0].get("metric"))
        for j, col in enumerate(cols):
            ax = axes[i, j]
            against_steps = col in ("time_ms_per_step", "memory_bytes")
            xval = _steps_of if against_steps else (lambda r: r["config"]["seq_len"])
            slopes = []
            methods = by(group, method_label)
            for place, (label, rs) in enumerate(methods.items()):
                xs = sorted({xval(r) for r in rs})
                vals = [np.array([_value(r, col) for r in rs if xval(r) == x], float) for x in xs]
                # interval bars of the methods side by side, not on top of each other
                dodged = np.array(xs, float) * (1 if against_steps else 1 + 0.025 * (place - (len(methods) - 1) / 2))
                if col == "solved":
                    k = [int(np.nansum(v)) for v in vals]
                    n = [int(np.isfinite(v).sum()) for v in vals]
                    frac = np.array([a / b if b else np.nan for a, b in zip(k, n)])
                    ci = np.array([stats.clopper_pearson(a, b) for a, b in zip(k, n)])
                    ax.errorbar(dodged, frac, yerr=np.maximum(0, [frac - ci[:, 0], ci[:, 1] - frac]),
                                color=st[label]["color"], capsize=3, linewidth=0.8, label="_ci", linestyle="none")
                    ax.plot(dodged, frac, label=label, markersize=6, **st[label])
                    continue
                for x, v in zip(dodged, vals):
                    ax.plot([x] * len(v), v, linestyle="none", alpha=0.45, marker=st[label]["marker"],
                            color=st[label]["color"], markersize=4, label="_seed")
                if against_steps:
                    mid = [np.nanmedian(v) if np.isfinite(v).any() else np.nan for v in vals]
                    slope = _slope(xs, mid)
                    if slope is not None:
                        slopes.append((label, slope, st[label]))
                else:
                    ci = [stats.mean_ci(v, bounds=stats.COSINE_RANGE if col.startswith("grad") else bounds)
                          for v in vals]
                    mid = np.array([c[0] for c in ci])
                    low, high = np.array([c[1] for c in ci]), np.array([c[2] for c in ci])
                    ok = np.isfinite(low)
                    if ok.any():
                        # max(0, .): a cosine of 1 + 2e-16 has its interval cut at 1, just below it
                        ax.errorbar(dodged[ok], mid[ok], yerr=np.maximum(0, [mid[ok] - low[ok], high[ok] - mid[ok]]),
                                    color=st[label]["color"], capsize=3, linewidth=0.8, linestyle="none", label="_ci")
                ax.plot(dodged, mid, label=label, markersize=6, **st[label])
            values = sorted({xval(r) for r in group})
            if against_steps or (values and values[-1] >= 4 * values[0] > 0):
                ax.set_xscale("log")
                ax.xaxis.set_minor_locator(ticker.NullLocator())
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.xaxis.set_minor_locator(ticker.NullLocator())
            if against_steps:
                ax.set_yscale("log")
                _fit_to_lines(ax)
                _log_ticks(ax, in_bytes=col == "memory_bytes")
                _write_slopes(ax, slopes)
            elif col == "solved":
                ax.set_ylim(-0.05, 1.05)
            else:
                _fit_to_lines(ax, stats.COSINE_RANGE if col.startswith("grad") else bounds)
            ylabel = SEQ_LEN_PANELS[col] or metric_label(group[0])
            ax.set(xlabel="steps L of a sequence" if against_steps else "horizon T", ylabel=ylabel)
            ax.set_title(title if j == 0 else "", loc="left")
    _legend(fig, axes)
    return fig


SCALING = {"score": None, "time_ms_per_step": COSTS["time_ms_per_step"], "saved_bytes": COSTS["saved_bytes"],
           "grad_cosine_recurrent": COSINE}


def plot_scaling(records: list[dict], kind: str, variable: str):
    """Against a varied sequence length (plot_scaling_seq_len) or a numeric method hyperparameter:
    score, time per step, saved bytes and cosine; one row per task, per-seed points and the mean;
    log y for the costs. Methods without that hyperparameter are horizontal lines."""
    if kind == "seq_len":
        return plot_scaling_seq_len(records)
    runs = ok_runs(records)
    name, key = variable.rsplit(".", 1)
    rows = by(runs, task_label)
    line = lambda r: name + "".join(f"[{k}={v}]" for k, v in sorted(r["config"]["method_params"].items())
                                    if k != key)
    xval = lambda r: method_param(r, key)
    st = styles([line(r) if r["config"]["method"] == name else method_label(r) for r in runs])
    fig, axes = plt.subplots(len(rows), len(SCALING), figsize=(4.2 * len(SCALING) + 2.2, 3.2 * len(rows)),
                             squeeze=False, layout="constrained")
    for i, (title, group) in enumerate(rows.items()):
        bounds = stats.metric_range(group[0].get("metric"))
        varying = [r for r in group if r["config"]["method"] == name and xval(r) is not None]
        others = [r for r in group if r not in varying]
        for j, (col, ylabel) in enumerate(SCALING.items()):
            ax = axes[i, j]
            for label, rs in by(varying, line).items():
                xs = sorted({xval(r) for r in rs})
                vals = [[_value(r, col) for r in rs if xval(r) == x] for x in xs]
                for x, v in zip(xs, vals):
                    ax.plot([x] * len(v), v, linestyle="none", alpha=0.45,
                            marker=st[label]["marker"], color=st[label]["color"], markersize=4, label="_seed")
                mean = [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in vals]
                ax.plot(xs, mean, label=label, markersize=6, **st[label])
            for label, rs in by(others, method_label).items():   # methods without this hyperparameter
                values = [v for v in (_value(r, col) for r in rs) if np.isfinite(v)]
                if values:
                    ax.axhline(np.mean(values), color=st[label]["color"], linestyle=st[label]["linestyle"],
                               linewidth=1.2, label=label)
            values = sorted({xval(r) for r in varying})
            if values and values[-1] >= 4 * values[0] > 0:
                ax.set_xscale("log")
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.xaxis.set_minor_locator(ticker.NullLocator())
            if col in COSTS:
                ax.set_yscale("log")
                _fit_to_lines(ax)
                _log_ticks(ax, in_bytes=col == "saved_bytes")
            else:
                _fit_to_lines(ax, stats.COSINE_RANGE if col.startswith("grad") else bounds)
            ax.set(xlabel=f"{name} {key}", ylabel=ylabel or metric_label(group[0]))
            ax.set_title(title if j == 0 else "", loc="left")
    _legend(fig, axes)
    return fig


# --- the page ---------------------------------------------------------------------------------
def _fidelity_caption(records: list[dict]) -> str:
    runs = fidelity_runs(records)
    refs = sorted({f"{method_label(r)} → {(r.get('fidelity_reference') or {}).get('label')}"
                   for r in runs if shared(r)})
    if refs and all(shared(r) for r in runs):
        where = ("at the shared parameters of each method's reference trajectory (full BPTT through its own "
                 f"network, trained once per configuration and seed: {'; '.join(refs)}), on a held-out batch; "
                 "filled points: the reference had solved the task at that checkpoint, hollow: it had not")
    else:
        where = ("at each run's own parameters, on a held-out batch (these records name no shared reference "
                 "trajectory: a method stuck at chance may look exact there)")
    return (f"Cosine between each method's gradient and the exact one (recurrent parameters) during training, "
            f"{where}; line: mean over seeds, 95% band within [-1, 1] with {MIN_SEEDS_FOR_BAND} or more seeds.")


def figures(records: list[dict]) -> list[tuple[str, object, str]]:
    """(file name, figure, one-line caption) for every figure the records support."""
    runs = ok_runs(records)
    if not runs:
        return []
    out = [(f"learning_{x}.png", plot_learning_curves(records, x),
            f"Test score against {X_AXES[x]}: mean over seeds (thick), one thin line per seed, "
            f"95% Student-t band cut to the metric's range with {MIN_SEEDS_FOR_BAND} or more seeds; dotted: chance; "
            f"log x where the methods' ranges differ {LOG_X_SPREAD}-fold (the evaluation at 0 is then left out).")
           for x in X_AXES]
    if fidelity_runs(records):
        out.append(("fidelity.png", plot_fidelity(records), _fidelity_caption(records)))
    out.append(("costs.png", plot_costs(records),
                "Per method, median time per training step, and memory: bytes autograd saves for backward (filled) "
                "beside the method's own carried state outside autograd (hollow; 0 written where it is zero); "
                "log scale; small points: seeds."))
    if any(r.get("credit_by_lag") for r in runs):
        out.append(("credit_by_lag.png", plot_credit_by_lag(records),
                    "Credit by lag at the end of training: geometric mean over seeds (thin lines: each seed; band "
                    f"from {MIN_SEEDS_FOR_BAND} seeds) of the norm of the gradient each method delivers to the hidden "
                    "state d steps before a loss term, log scale; ticks at the bottom: exactly zero; dashed: a "
                    "method's truncation length; dotted: the task's dependency lag."))
    if any(p.get("diagnostics") for r in runs for p in r.get("curve", [])):
        out.append(("diagnostics.png", plot_diagnostics(records),
                    "The methods' own diagnostics during training (e.g. SAB's attention), mean over seeds and each "
                    "seed."))
    for kind, variable in varied(records):
        # an out-of-tree method is named by its file path: keep the file name plain
        name = "seq_len" if kind == "seq_len" else re.sub(r"\W+", "_", Path(variable).name)
        caption = (f"Against the horizon T: score (mean, seeds, 95% interval from {MIN_SEEDS_FOR_BAND} seeds), solved "
                   "fraction with its Clopper-Pearson interval, cosine; against the steps L of a sequence on log-log "
                   "axes: time per step and memory (saved + carried state), with the slope of a line fitted to the "
                   "logs of the medians (scipy.stats.linregress): 1 is linear in L, 0 constant."
                   if kind == "seq_len" else
                   f"Score, time per step, saved bytes and cosine against {variable}; points: seeds, line: mean; "
                   "log y for the costs, log x when the values span a factor of 4 or more.")
        out.append((f"scaling_{name}.png", plot_scaling(records, kind, variable), caption))
    return out


# fields an older version did not store, and what a record lacking them is shown without
LEGACY = {"solved_threshold": "the solved columns", "method_defaults": "the hyperparameter defaults of the scaling "
          "figures"}


def legacy_warnings(records: list[dict]) -> list[str]:
    """One line per field that some finished records lack (written by an older version): they are
    shown without it, never by importing the method or task they name."""
    lines = []
    for key, what in LEGACY.items():
        n = sum(1 for r in ok_runs(records) if key not in r)
        if n:
            lines.append(f"warning: {n} record{'s' if n > 1 else ''} written by an older version lack{'' if n > 1 else 's'} "
                         f"'{key}': shown without {what}")
    return lines


def run_order(r: dict) -> tuple:
    """Records (whose files are named by hash) in the order a run list would give them."""
    cfg = r["config"]
    return (cfg["task"], str(cfg.get("task_params")), cfg["seq_len"], cfg["method"],
            str(sorted(cfg["method_params"].items())), cfg["seed"])


def write(out_dir: Path, records: list[dict] | None = None, damaged: int = 0) -> Path:
    """Write the summary tables, DIR/figures/*.png and DIR/report.md from `records` (default: every
    valid record in DIR/runs; damaged ones are skipped, warned about and counted in the footnote,
    as are the `damaged` given). Returns the path of report.md. A write error is an OSError
    naming the file."""
    out_dir = Path(out_dir)
    if records is None:   # files are named by hash: order them as a run list would be
        skipped: list = []
        records = sorted(store.load_all(out_dir, skipped), key=run_order)
        damaged += len(skipped)
    records = store.newest([r for r in records if r])   # each run once: its newest record
    for line in legacy_warnings(records):
        print(line, file=sys.stderr)
    table = summary.summarise(records)
    table.attrs["damaged"] = damaged
    md_table = summary.write(table, out_dir)
    (out_dir / FIGURES).mkdir(parents=True, exist_ok=True)
    lines = ["# creditbench report", "",
             f"{len(records)} run records ({len(ok_runs(records))} ok) from `{store.runs_dir(out_dir)}`; "
             f"rebuild with `python -m harness.report {out_dir}`.", "", "## Summary", "", md_table, "",
             summary.footnote(table), ""]
    seeds = summary.per_seed(records)
    write_atomic(out_dir / "per_seed.csv", seeds.to_csv(index=False))
    lines += ["## Per seed", "", summary.per_seed_markdown(seeds), ""]
    bad = [r for r in records if r.get("status") != "ok"]
    if bad:
        lines += ["Runs that did not finish:", ""] + [
            f"- {r['status']}: {method_label(r)} on {r['config']['task']} seed {r['config']['seed']}: "
            f"{r.get('error', '')}" for r in bad] + [""]
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        made = figures(records)
        lines += ["## Figures", ""]
        for name, fig, caption in made:
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=110)
            plt.close(fig)
            write_atomic(out_dir / FIGURES / name, png.getvalue())   # whole or not at all, umask honoured
            lines += [f"![{Path(name).stem.replace('_', ' ')}]({FIGURES}/{name})", "", f"*{caption}*", ""]
    if not made:
        lines += ["No finished runs: nothing to plot.", ""]
    path = out_dir / "report.md"
    write_atomic(path, "\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.report",
                                     description="Rebuild tables, figures and report.md from DIR/runs/*.json.")
    parser.add_argument("dir", type=Path, help="an output folder of run_all.py (holding runs/)")
    args = parser.parse_args(argv)
    if not store.runs_dir(args.dir).is_dir():
        print(f"python -m harness.report: error: no records folder '{store.runs_dir(args.dir)}'", file=sys.stderr)
        return 2
    try:
        print(write(args.dir))
    except OSError as exc:   # disk full, permissions: the records are untouched
        print(f"python -m harness.report: error: {write_error(exc)}", file=sys.stderr)
        return 1
    return 0


def write_error(exc: OSError) -> str:
    """One line for a failed write: the file and the reason."""
    return f"cannot write {exc.filename or 'a file'}: {exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())

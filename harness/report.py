"""The results page: summary tables, figures and `report.md`, rebuilt from run records alone.

    python -m harness.report DIR     # reads DIR/runs/*.json, writes DIR/report.md, DIR/figures/*.png

Records from several machines can be copied into one DIR/runs and re-plotted without training.
Every figure shows each seed (thin lines or small points) as well as the mean with its 95%
Student-t band: two to five seeds of solved/unsolved outcomes are not a distribution. Colours
come from seaborn's colour-blind palette, and each method also has its own marker and line
style, so the figures read in grayscale.
"""
from __future__ import annotations

import argparse
import io
import re
import sys
from collections import defaultdict
from itertools import cycle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker  # noqa: E402

from . import stats, store, summary  # noqa: E402
from .store import write_atomic  # noqa: E402

FIGURES = "figures"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (3, 1))]
X_AXES = {"sequences": "training sequences seen", "updates": "parameter updates",
          "wall_s": "wall-clock training time (s)"}
COSTS = {"time_ms_per_step": "time per training step (ms)", "saved_bytes": "saved for backward (bytes)"}


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
    """label -> matplotlib keyword arguments: colour, marker and line style each differ."""
    labels = list(dict.fromkeys(labels))
    colours = sns.color_palette("colorblind", max(len(labels), 1))
    return {lab: {"color": colours[i], "marker": MARKERS[i % len(MARKERS)],
                  "linestyle": LINESTYLES[i % len(LINESTYLES)]} for i, lab in enumerate(labels)}


def by(records, key) -> dict:
    groups = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    return dict(groups)


MIN_SEEDS_FOR_BAND = 3   # a t band over two seeds spans the whole axis (t = 12.7): show the seeds alone
MAX_COLUMNS = 3


def _panels(n: int, width: float = 4.6, height: float = 3.4):
    """A grid of at most MAX_COLUMNS columns; panels beyond n are hidden. Returns (fig, flat axes)."""
    n = max(n, 1)
    cols = min(n, MAX_COLUMNS)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.8, height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


def _task_panels(records: list[dict], runs: list[dict]):
    """(fig, axes, runs by task, styles): one panel per task; styles from every finished run, so a
    method looks the same in every figure."""
    panels = by(runs, task_label)
    fig, axes = _panels(len(panels))
    return fig, axes, panels, styles(method_label(r) for r in ok_runs(records))


def _fit_to_lines(ax) -> None:
    """y limits from the plotted lines (seeds, means, reference lines), not from the bands, which
    may reach values a score cannot take."""
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
    else:
        pad = 0.06 * (hi - lo) or 0.05 * max(abs(hi), 1e-3)
        ax.set_ylim(lo - pad, hi + pad)


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside right upper", frameon=False)


def _band(ax, x, table, st, label, markevery=None):
    """Thin per-seed lines, the mean (labelled) and its 95% band."""
    table = np.atleast_2d(np.asarray(table, float))
    for row in table:
        ax.plot(x, row, color=st["color"], linestyle=st["linestyle"], linewidth=0.7, alpha=0.35, label="_seed")
    mean, low, high = stats.mean_ci_columns(table)
    ax.plot(x, mean, label=label, linewidth=1.8, markersize=5, markevery=markevery, **st)
    if len(table) >= MIN_SEEDS_FOR_BAND and np.isfinite(low).any():
        ax.fill_between(x, low, high, color=st["color"], alpha=0.18, linewidth=0, label="_band")


def _common_grid(xs: list[np.ndarray], points: int = 40) -> tuple[np.ndarray, bool]:
    """The seeds' own x when they agree, else an even grid over the range every seed covers."""
    if all(len(x) == len(xs[0]) and np.allclose(x, xs[0]) for x in xs):
        return xs[0], False
    return np.linspace(max(x[0] for x in xs), min(x[-1] for x in xs), points), True


def _log_ticks(ax, which: str = "y", in_bytes: bool = False) -> None:
    """Readable log-axis ticks, no minor labels; call once the limits are final. Plain numbers at
    1-2-5 steps (finer over less than a decade), or bytes at powers of two (and halves between)."""
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    base = 2 if in_bytes else 10
    span = np.log(hi / lo) / np.log(base) if lo > 0 and hi > lo else 10.0
    if in_bytes:
        subs = (1, 1.25, 1.5, 1.75) if span < 1.5 else (1, 1.5) if span < 4 else (1.0,)
        fmt = lambda v: summary._bytes(v).replace(".0 ", " ")
    else:
        subs = (1, 1.5, 2, 3, 5, 7) if span < 1.0 else (1, 2, 5) if span < 2.5 else (1.0,)
        fmt = lambda v: f"{v:g}"
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_locator(ticker.LogLocator(base=base, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt(v)))
    axis.set_minor_locator(ticker.NullLocator())


# --- figures -----------------------------------------------------------------------------------
def plot_learning_curves(records: list[dict], x: str = "sequences"):
    """Score against `x` (sequences, updates or wall_s), one panel per task, one line per method
    (mean, 95% band, per-seed thin lines), chance as a horizontal line."""
    runs = ok_runs(records)
    fig, axes, panels, st = _task_panels(records, runs)
    for ax, (title, group) in zip(axes, panels.items()):
        for label, rs in by(group, method_label).items():
            xs = [np.array([c[x] for c in r["curve"]], float) for r in rs]
            ys = [np.array([c["score"] for c in r["curve"]], float) for r in rs]
            grid, interpolated = _common_grid(xs)
            table = [np.interp(grid, xi, yi) if interpolated else yi for xi, yi in zip(xs, ys)]
            _band(ax, grid, table, st[label], label, markevery=max(1, len(grid) // 8))
        ax.axhline(group[0]["chance"], color="0.3", linestyle=(0, (1, 2)), linewidth=1.2, label="chance")
        if not group[0].get("higher_is_better", True):
            ax.set_yscale("log")
        ax.set(title=title, xlabel=X_AXES[x], ylabel=metric_label(group[0]))
        _fit_to_lines(ax)
        if ax.get_yscale() == "log":
            _log_ticks(ax)
    _legend(fig, axes)
    return fig


def plot_fidelity(records: list[dict]):
    """Cosine of each method's gradient with the exact one (recurrent parameters) at the fidelity
    checkpoints, against training sequences seen."""
    runs = [r for r in ok_runs(records) if r.get("fidelity")]
    fig, axes, panels, st = _task_panels(records, runs)
    for ax, (title, group) in zip(axes, panels.items()):
        for label, rs in by(group, method_label).items():
            xs = [np.array([f["step"] * r["config"]["batch"] for f in r["fidelity"]], float) for r in rs]
            ys = [np.array([np.nan if f.get("cosine_recurrent") is None else f["cosine_recurrent"]
                            for f in r["fidelity"]], float) for r in rs]
            grid, interpolated = _common_grid(xs, points=len(xs[0]))
            table = [np.interp(grid, xi, yi) if interpolated else yi for xi, yi in zip(xs, ys)]
            for xi, yi in zip(xs, ys):
                ax.plot(xi, yi, linestyle="none", marker=st[label]["marker"], color=st[label]["color"],
                        alpha=0.45, markersize=4, label="_seed")
            _band(ax, grid, table, st[label], label)
        ax.axhline(1.0, color="0.3", linestyle=(0, (1, 2)), linewidth=1.0, label="exact")
        ax.set(title=title, xlabel=X_AXES["sequences"], ylabel="cosine with exact gradient\n(recurrent parameters)")
        _fit_to_lines(ax)
    _legend(fig, axes)
    return fig


def plot_costs(records: list[dict]):
    """Time per training step and bytes saved for backward per method (log scale), one column per
    task, per-seed points and the mean."""
    runs = ok_runs(records)
    panels = by(runs, task_label)
    st = styles(method_label(r) for r in runs)
    fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels) + 1.8, 6.0), squeeze=False,
                             layout="constrained")
    rng = np.random.default_rng(0)
    for col, (title, group) in enumerate(panels.items()):
        methods = by(group, method_label)
        for row, (key, ylabel) in enumerate(COSTS.items()):
            ax = axes[row, col]
            for i, (label, rs) in enumerate(methods.items()):
                values = np.array([summary.record_row(r).get(key) or np.nan for r in rs], float)
                ax.plot(i + rng.uniform(-0.12, 0.12, len(values)), values, linestyle="none", alpha=0.5,
                        marker=st[label]["marker"], color=st[label]["color"], markersize=4, label="_seed")
                ax.plot([i], [np.nanmean(values)], linestyle="none", marker=st[label]["marker"], markersize=10,
                        markerfacecolor="white", markeredgewidth=2, color=st[label]["color"], label=label)
            ax.set_yscale("log")
            ax.set_xticks(range(len(methods)), list(methods), rotation=20, ha="right")
            ax.set_xlim(-0.6, len(methods) - 0.4)
            ax.set(ylabel=ylabel, title=title if row == 0 else None)
            _log_ticks(ax, in_bytes=key == "saved_bytes")
    _legend(fig, axes)
    return fig


def plot_credit_by_lag(records: list[dict]):
    """Mean norm of the gradient reaching the hidden state d steps before each loss term, against d,
    log y; lags where it is exactly zero are ticked along the bottom."""
    runs = [r for r in ok_runs(records) if r.get("credit_by_lag")]
    fig, axes, panels, st = _task_panels(records, runs)
    for ax, (title, group) in zip(axes, panels.items()):
        for label, rs in by(group, method_label).items():
            lag = np.array(rs[0]["credit_by_lag"]["lag"], float)
            table = np.array([[np.nan if v is None else v for v in r["credit_by_lag"]["norm"]] for r in rs], float)
            zero = np.all(table == 0, axis=0)
            _band(ax, lag, np.where(table > 0, table, np.nan), st[label], label,
                  markevery=max(1, len(lag) // 10))
            if zero.any():
                ax.plot(lag[zero], np.full(zero.sum(), 0.02), transform=ax.get_xaxis_transform(), linestyle="none",
                        marker="|", markersize=8, color=st[label]["color"], label="_zero")
        ax.set_yscale("log")
        ax.set(title=title, xlabel="lag d (time steps before the loss term)",
               ylabel="mean $|\\partial L_t / \\partial h_{t-d}|$\n(end of training)")
        _fit_to_lines(ax)
        _log_ticks(ax)
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


SCALING = {"score": None, "time_ms_per_step": COSTS["time_ms_per_step"], "saved_bytes": COSTS["saved_bytes"],
           "grad_cosine_recurrent": "cosine with exact gradient\n(recurrent parameters)"}


def plot_scaling(records: list[dict], kind: str, variable: str):
    """Score, time per step, saved bytes and cosine against a varied sequence length or method
    hyperparameter; one row per task, per-seed points and the mean; log-log for the costs."""
    runs = ok_runs(records)
    st = styles(method_label(r) for r in runs)
    if kind == "seq_len":
        rows = by(runs, lambda r: task_label(r).replace(f" T={r['config']['seq_len']}", ""))
        line, xval = method_label, (lambda r: r["config"]["seq_len"])
        xlabel = "horizon T (time steps)"
    else:
        name, key = variable.rsplit(".", 1)
        rows = by(runs, task_label)
        line = lambda r: name + "".join(f"[{k}={v}]" for k, v in sorted(r["config"]["method_params"].items())
                                        if k != key)
        xval = lambda r: method_param(r, key)
        xlabel = f"{name} {key}"
        st = styles([line(r) if r["config"]["method"] == name else method_label(r) for r in runs])
    fig, axes = plt.subplots(len(rows), len(SCALING), figsize=(4.2 * len(SCALING) + 1.8, 3.2 * len(rows)),
                             squeeze=False, layout="constrained")
    for i, (title, group) in enumerate(rows.items()):
        varying = [r for r in group if kind == "seq_len" or (r["config"]["method"] == name and xval(r) is not None)]
        others = [] if kind == "seq_len" else [r for r in group if r not in varying]
        for j, (col, ylabel) in enumerate(SCALING.items()):
            ax = axes[i, j]
            for label, rs in by(varying, line).items():
                xs = sorted({xval(r) for r in rs})
                vals = [[summary.record_row(r).get(col) for r in rs if xval(r) == x] for x in xs]
                for x, v in zip(xs, vals):
                    ax.plot([x] * len(v), [np.nan if u is None else u for u in v], linestyle="none", alpha=0.45,
                            marker=st[label]["marker"], color=st[label]["color"], markersize=4, label="_seed")
                mean = [np.nanmean([np.nan if u is None else u for u in v]) for v in vals]
                ax.plot(xs, mean, label=label, markersize=6, **st[label])
            for label, rs in by(others, method_label).items():   # methods without this hyperparameter
                values = [summary.record_row(r).get(col) for r in rs]
                values = [v for v in values if v is not None]
                if values:
                    ax.axhline(np.mean(values), color=st[label]["color"], linestyle=st[label]["linestyle"],
                               linewidth=1.2, label=label)
            values = sorted({xval(r) for r in varying})
            if values and values[-1] >= 4 * values[0] > 0:
                ax.set_xscale("log")
                ax.xaxis.set_minor_locator(ticker.NullLocator())
            ax.set_xticks(values, [f"{v:g}" for v in values])
            if col in COSTS:
                ax.set_yscale("log")
                _log_ticks(ax, in_bytes=col == "saved_bytes")
            ax.set(xlabel=xlabel, ylabel=ylabel or metric_label(group[0]))
            ax.set_title(title if j == 0 else "", loc="left")
    _legend(fig, axes)
    return fig


# --- the page ---------------------------------------------------------------------------------
def figures(records: list[dict]) -> list[tuple[str, object, str]]:
    """(file name, figure, one-line caption) for every figure the records support."""
    runs = ok_runs(records)
    if not runs:
        return []
    out = [(f"learning_{x}.png", plot_learning_curves(records, x),
            f"Test score against {X_AXES[x]}: mean over seeds (thick), one thin line per seed, "
            f"95% Student-t band with {MIN_SEEDS_FOR_BAND} or more seeds; dotted: chance.") for x in X_AXES]
    if any(r.get("fidelity") for r in runs):
        out.append(("fidelity.png", plot_fidelity(records),
                    "Cosine between each method's gradient and the exact one (full BPTT through the same network, "
                    "recurrent parameters, held-out batch) during training; points: seeds, line: mean (95% band with "
                    f"{MIN_SEEDS_FOR_BAND} or more seeds)."))
    out.append(("costs.png", plot_costs(records),
                "Median time per training step and peak bytes saved for backward per method (log scale); "
                "small points: seeds, large: mean."))
    if any(r.get("credit_by_lag") for r in runs):
        out.append(("credit_by_lag.png", plot_credit_by_lag(records),
                    "Credit by lag at the end of training: mean norm of the gradient each method delivers to the "
                    "hidden state d steps before a loss term (log scale); ticks at the bottom: exactly zero."))
    for kind, variable in varied(records):
        # an out-of-tree method is named by its file path: keep the file name plain
        name = "seq_len" if kind == "seq_len" else re.sub(r"\W+", "_", Path(variable).name)
        out.append((f"scaling_{name}.png", plot_scaling(records, kind, variable),
                    f"Score, time per step, saved bytes and cosine against {variable}; points: seeds, "
                    "line: mean; log y for the costs, log x when the values span a factor of 4 or more."))
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

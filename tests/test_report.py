"""The results page built from the records of a tiny real run: every figure, links that resolve,
the learning-curve figure's lines, and the table's interval and test against scipy."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import matplotlib
import matplotlib.pyplot

from harness import palette, report, runner, store, summary
from harness.cli import build_configs, main, make_parser

TINY = ["--steps", "3", "--hidden", "4", "--batch", "2", "--eval-batches", "1", "--fidelity-points", "2",
        "--quiet"]
FIGURES = {"learning_sequences.png", "learning_updates.png", "learning_wall_s.png", "fidelity.png", "costs.png",
           "credit_by_lag.png", "scaling_seq_len.png", "scaling_tbptt_k.png"}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    matplotlib.pyplot.close("all")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    # three seeds of two methods (intervals and tests), then one seed each of a varied T and k
    assert main(["--methods", "bptt,tbptt[k=2]", "--tasks", "adding", "--seq-len", "3", "--seeds", "3",
                 *TINY, "--out", str(out)]) == 0
    assert (out / "report.md").exists() and (out / "figures" / "learning_sequences.png").exists()
    # the runner alone (no report: the tests rebuild it from the records)
    for task, seq_len in (("adding", "3,5"), ("copy", "3")):
        args = make_parser().parse_args(["--methods", "bptt,tbptt[k=3]", "--tasks", task, "--seq-len", seq_len,
                                         "--seeds", "1", *TINY, "--out", str(out)])
        assert all(r["status"] == "ok" for r in runner.run_all(build_configs(args), out, progress=False))
    return out


def test_rebuilt_from_records_alone_every_figure_and_link(out):
    for p in (out / "figures").glob("*.png"):
        p.unlink()
    assert report.main([str(out)]) == 0
    written = {p.name for p in (out / "figures").glob("*.png")}
    assert written == FIGURES
    for name in written:
        assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert {f"figures/{name}" for name in FIGURES} == set(links)
    assert all((out / link).is_file() for link in links)
    assert "| method" in text and "tbptt[k=3]" in text


def test_missing_folder_is_an_error(tmp_path, capsys):
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert "no records folder" in capsys.readouterr().err


def test_learning_curve_has_one_line_per_method_and_chance(out):
    records = store.load_all(out)
    fig = report.plot_learning_curves(records, "sequences")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}
    assert set(panels) == {"copy T=3, lstm-4", "adding T=3, lstm-4", "adding T=5, lstm-4"}
    ax = panels["copy T=3, lstm-4"]
    named = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert sorted(line.get_label() for line in named) == ["bptt", "chance", "tbptt[k=3]"]
    (chance,) = [line for line in named if line.get_label() == "chance"]
    assert np.allclose(chance.get_ydata(), 1 / 8)
    assert not ax.collections                          # one seed: no band
    ax = panels["adding T=3, lstm-4"]
    named = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert sorted(line.get_label() for line in named) == ["bptt", "chance", "tbptt[k=2]", "tbptt[k=3]"]
    seeds = [r for r in records if r["config"]["task"] == "adding" and r["config"]["seq_len"] == 3
             and r.get("method_label") == "bptt"]
    assert len(seeds) == 3
    (mean,) = [line for line in named if line.get_label() == "bptt"]
    np.testing.assert_allclose(mean.get_ydata(), np.mean([[c["score"] for c in r["curve"]] for r in seeds], 0))
    np.testing.assert_allclose(mean.get_xdata(), [c["sequences"] for c in seeds[0]["curve"]])
    assert len([line for line in ax.get_lines() if line.get_label() == "_seed"]) == 7   # a thin line per seed
    assert len(ax.collections) == 2                             # a 95% band per method with three seeds
    ax = panels["adding T=5, lstm-4"]
    assert sorted(line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")) == \
        ["bptt", "chance", "tbptt[k=3]"]
    assert ax.get_yscale() == "log"                    # MSE: lower is better, across decades


def test_credit_figure_marks_what_truncation_cuts(out):
    records = store.load_all(out)
    fig = report.plot_credit_by_lag(records)
    ax = next(ax for ax in fig.axes if ax.get_title() == "copy T=3, lstm-4")
    zero = [line for line in ax.get_lines() if line.get_label() == "_zero"]
    assert len(zero) == 1 and min(zero[0].get_xdata()) == 3      # tbptt[k=3]: nothing reaches lag 3
    record = next(r for r in records if r.get("method_label") == "bptt" and r["config"]["task"] == "copy")
    assert all(v > 0 for v in record["credit_by_lag"]["norm"])


def test_table_interval_and_verdict_agree_with_scipy(out):
    records = store.load_all(out)
    table = pd.read_csv(out / "summary.csv")
    scores = {m: [r["final"]["score"] for r in records if r["config"]["task"] == "adding" and r["config"]["seq_len"] == 3
                  and r["method_label"] == m] for m in ("bptt", "tbptt[k=2]", "tbptt[k=3]")}
    assert [len(v) for v in scores.values()] == [3, 3, 1]
    rows = table[(table["task"] == "adding") & (table["seq_len"] == 3)].set_index(["method", "params"])
    mean, sem = np.mean(scores["bptt"]), sps.sem(scores["bptt"])
    low, high = sps.t.interval(0.95, 2, loc=mean, scale=sem)
    assert rows.loc[("bptt", np.nan)][["score_ci_low", "score_ci_high"]].tolist() == pytest.approx([max(low, 0), high])
    assert (rows["score_ci_low"].dropna() >= 0).all()                      # MSE: never below zero
    one = rows.loc[("tbptt", "k=3")]
    assert np.isnan(one["score_ci_low"]) and np.isnan(one["score_ci_high"]) and np.isnan(one["p_vs_top"])
    assert one["verdict"] == "no test" and "fewer than 3 seeds" in one["no_test_reason"]
    # Welch's test of the two three-seed rows, as scipy computes it; one comparison: Holm leaves p as is
    two = rows.drop(index=("tbptt", "k=3"))
    top = two["score_mean"].idxmin()                                       # MSE: lower is better
    other = two.drop(index=top).iloc[0]
    name = lambda key: "bptt" if key[0] == "bptt" else "tbptt[k=2]"
    p = sps.ttest_ind(scores[name(other.name)], scores[name(top)], equal_var=False).pvalue
    assert other["p_vs_top"] == pytest.approx(p, rel=1e-9) and other["p_holm"] == pytest.approx(p, rel=1e-9)
    assert other["verdict"] == ("worse" if p < 0.05 else "tied")
    assert two.loc[top, "verdict"] == ("no test" if p < 0.05 else "tied")  # the untested one-seed row: no "best"
    footnote = (out / "summary.md").read_text()
    assert "Holm" in footnote and "no test: fewer than 3 seeds" in footnote
    assert "copy: accuracy >= 0.99" in footnote and "adding: mse <= 0.01" in footnote


def test_solved_interval_is_clopper_pearson(out):
    table = pd.read_csv(out / "summary.csv")
    for _, row in table.iterrows():
        k = round(row["solved_frac"] * row["seeds"])
        ci = sps.binomtest(k, int(row["seeds"])).proportion_ci(method="exact")
        assert (row["solved_ci_low"], row["solved_ci_high"]) == pytest.approx((ci.low, ci.high))


def test_records_and_table_carry_steps_and_lag(out):
    table = pd.read_csv(out / "summary.csv")
    copy = table[table["task"] == "copy"].iloc[0]
    assert (copy["seq_len"], copy["num_steps"], copy["lag"]) == (3, 23, 13)   # copy: L = T + 20, lag T + 10
    adding = table[(table["task"] == "adding") & (table["seq_len"] == 5)].iloc[0]
    assert (adding["num_steps"], adding["lag"]) == (5, 4)                      # adding: up to L - 1
    md = (out / "summary.md").read_text()
    assert "| L " in md and "lag (steps)" in md and "ms/step" in md and "saved (KiB)" in md


def test_records_hold_credit_and_threshold(out):
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert record["solved_threshold"] in (0.99, 0.01)
    assert len(record["credit_by_lag"]["norm"]) == record["num_steps"]


def test_per_seed_table_shows_a_collapse_that_the_mean_hides(out):
    base = next(r for r in store.load_all(out) if r["config"]["task"] == "copy")
    point = lambda seqs, score, loss: {"sequences": seqs, "score": score, "test_loss": loss}
    collapsed = base | {"curve": [point(0, 0.9, 0.01), point(10, 0.3, 0.2), point(20, 0.6, 0.1),
                                  point(30, 0.0, 5.0)], "final": {"score": 0.0, "test_loss": 5.0}}
    failed = base | {"status": "failed", "config": base["config"] | {"seed": 7}}
    df = summary.per_seed([collapsed, failed])
    row = df.iloc[0]
    # the untrained evaluation at 0 sequences does not count as the best
    assert (row["final"], row["best"], row["best_at"]) == (0.0, 0.6, 20)
    assert (row["peak_loss"], row["peak_loss_at"], row["final_loss"]) == (5.0, 30, 5.0)
    assert df.iloc[1]["status"] == "failed" and np.isnan(df.iloc[1]["final"])
    text = summary.per_seed_markdown(df)
    assert text.count("\n|") == 3 and "| failed" in text and "copy" in text


def test_report_lists_every_seed(out):
    report.write(out)
    table = pd.read_csv(out / "per_seed.csv")
    assert len(table) == len(store.load_all(out))
    assert set(table["seed"]) == {0, 1, 2}
    assert "## Per seed" in (out / "report.md").read_text()


def _line_colour(ax, label):
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return matplotlib.colors.to_hex(line.get_color())


def test_a_method_keeps_its_colour_in_every_report(out):
    records = store.load_all(out)
    alone = [r for r in records if r["method_label"] == "tbptt[k=3]"]
    for subset in (records, alone):
        fig = report.plot_learning_curves(subset, "sequences")
        ax = next(ax for ax in fig.axes if ax.get_title() == "copy T=3, lstm-4")
        assert _line_colour(ax, "tbptt[k=3]") == palette.KNOWN["tbptt"][0].lower()
    assert _line_colour(ax, "tbptt[k=3]") != _line_colour(
        next(a for a in report.plot_learning_curves(records, "sequences").axes if a.get_title() == "copy T=3, lstm-4"),
        "bptt")


def _band_ys(ax):
    ys = np.concatenate([p.vertices[:, 1] for c in ax.collections for p in c.get_paths()])
    return ys[np.isfinite(ys)]


def test_bands_stay_inside_what_the_quantity_can_take(out):
    records = store.load_all(out)
    fig = report.plot_learning_curves(records, "sequences")
    ax = next(ax for ax in fig.axes if ax.get_title() == "adding T=3, lstm-4")
    assert len(ax.collections) == 2 and _band_ys(ax).min() >= 0             # MSE >= 0
    fig = report.plot_fidelity(records)
    ax = next(ax for ax in fig.axes if ax.get_title() == "adding T=3, lstm-4")
    ys = _band_ys(ax)
    assert len(ys) and ys.min() >= -1 and ys.max() <= 1                      # cosines in [-1, 1]


def test_credit_marks_truncation_and_task_lag(out):
    fig = report.plot_credit_by_lag(store.load_all(out))
    ax = next(ax for ax in fig.axes if ax.get_title() == "copy T=3, lstm-4")
    verticals = {line.get_label(): line.get_xdata()[0] for line in ax.get_lines()
                 if line.get_label() in ("_truncation", "task's lag")}
    assert verticals == {"_truncation": 3, "task's lag": 13}                 # tbptt[k=3]; copy T=3: lag 13
    assert "k=3 " in [t.get_text() for t in ax.texts] and "lag 13 " in [t.get_text() for t in ax.texts]
    # the geometric mean of three seeds, not the arithmetic one
    records = [r for r in store.load_all(out) if r["config"]["task"] == "adding" and r["config"]["seq_len"] == 3
               and r["method_label"] == "bptt"]
    ax = next(ax for ax in fig.axes if ax.get_title() == "adding T=3, lstm-4")
    (mean,) = [line for line in ax.get_lines() if line.get_label() == "bptt"]
    norms = np.array([r["credit_by_lag"]["norm"] for r in records])
    np.testing.assert_allclose(mean.get_ydata(), sps.gmean(norms, axis=0), rtol=1e-12)


def test_costs_show_saved_bytes_and_carried_state(out):
    records = store.load_all(out)
    fig = report.plot_costs(records)
    rows = {time_ax.get_title(loc="left"): mem_ax for time_ax, mem_ax in zip(fig.axes[::2], fig.axes[1::2])}
    ax = rows["adding T=3, lstm-4"]
    assert ax.get_xlabel() == "bytes per training step"
    medians = [line for line in ax.get_lines() if line.get_label() == "_median"]
    hollow = [line for line in medians if line.get_markerfacecolor() == "white"]
    state = [r["memory"]["state_bytes"] for r in records if r["method_label"] == "tbptt[k=2]"]
    assert all(s > 0 for s in state) and len(hollow) == 1                    # tbptt[k=2]'s stored carries
    assert hollow[0].get_xdata()[0] == np.median(state)
    assert "0 B" in [t.get_text() for t in ax.texts]                         # bptt carries nothing
    lo, hi = ax.get_xlim()
    xs = np.concatenate([line.get_xdata() for line in ax.get_lines()])
    assert lo < xs.min() and xs.max() < hi                                  # every point inside the axes
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert min(ticks) <= xs.min() and xs.max() <= max(ticks)                 # ... and within the outer ticks


def test_scaling_against_horizon_fits_slopes(out):
    records = store.load_all(out)
    fig = report.plot_scaling(records, "seq_len", "seq_len")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    bptt = [r for r in records if r["config"]["task"] == "adding" and r["method_label"] == "bptt"]
    L = [r["num_steps"] for r in bptt]
    memory = [r["memory"]["saved_bytes"] + r["memory"]["state_bytes"] for r in bptt]
    xs = sorted(set(L))
    med = [np.median([m for m, l in zip(memory, L) if l == x]) for x in xs]
    slope = sps.linregress(np.log(xs), np.log(med)).slope
    assert f"bptt: slope {slope:.2f}" in texts
    logs = [ax for ax in fig.axes if ax.get_xscale() == "log" and ax.get_yscale() == "log"]
    assert len(logs) == 4                                                    # time and memory, two task rows


def test_log_x_when_updates_span_decades(out):
    records = [r for r in store.load_all(out) if r["config"]["task"] == "copy"]
    many = [{**r, "curve": [{**c, "updates": c["updates"] * 100} for c in r["curve"]]}
            for r in records if r["method_label"] == "tbptt[k=3]"]
    fig = report.plot_learning_curves([r for r in records if r["method_label"] == "bptt"] + many, "updates")
    ax = next(ax for ax in fig.axes if ax.get_visible())
    assert ax.get_xscale() == "log"
    assert all(x > 0 for line in ax.get_lines() if line.get_label() != "chance" for x in line.get_xdata())
    labels = [report._count(v) for v in (150000, 2500000, 1000, 0.5)]
    assert labels == ["150k", "2.5M", "1k", "0.5"]


def test_diagnostics_and_shared_fidelity_are_plotted_when_recorded(out):
    records = [r for r in store.load_all(out) if r["config"]["task"] == "copy"]
    assert not any(name == "diagnostics.png" for name, fig, _ in report.figures(records))
    tagged = []
    for r in records:
        curve = [{**p, "diagnostics": {"attention_entropy": 1.0 + p["step"]}} for p in r["curve"]]
        fidelity = [{**f, "reference_solved": i > 0} for i, f in enumerate(r["fidelity"])]
        tagged.append({**r, "curve": curve, "fidelity": fidelity,
                       "fidelity_reference": {"method": "bptt", "label": "bptt", "hash": "0" * 20}})
    made = {name: (fig, caption) for name, fig, caption in report.figures(tagged)}
    fig, _ = made["diagnostics.png"]
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    assert ax.get_ylabel() == "attention entropy"
    (line,) = [line for line in ax.get_lines() if line.get_label() == "bptt"]
    np.testing.assert_allclose(line.get_ydata(), [1.0 + p["step"] for p in records[0]["curve"]])
    fig, caption = made["fidelity.png"]
    assert "shared parameters" in caption and "tbptt[k=3] → bptt" in caption
    ax = next(ax for ax in fig.axes if ax.get_visible() and ax.get_title())
    hollow = [line for line in ax.get_lines() if line.get_label() == "_seed" and line.get_markerfacecolor() == "white"]
    assert len(hollow) == 2 and all(line.get_xdata()[0] == 0 for line in hollow)   # not solved at initialisation
    assert "shared parameters" in ax.get_ylabel()

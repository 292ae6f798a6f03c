"""The results page built from the records of a tiny real run: every figure, links that resolve,
the learning-curve figure's lines, and the table's interval and test against scipy."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from harness import report, runner, store, summary
from harness.cli import build_configs, main, make_parser

TINY = ["--steps", "3", "--hidden", "4", "--batch", "2", "--eval-batches", "1", "--fidelity-points", "2",
        "--quiet"]
FIGURES = {"learning_sequences.png", "learning_updates.png", "learning_wall_s.png", "fidelity.png", "costs.png",
           "credit_by_lag.png", "scaling_seq_len.png", "scaling_tbptt_k.png"}


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


def test_table_interval_and_test_agree_with_scipy(out):
    records = store.load_all(out)
    table = pd.read_csv(out / "summary.csv")
    scores = {m: [r["final"]["score"] for r in records if r["config"]["task"] == "adding" and r["config"]["seq_len"] == 3
                  and r["method_label"] == m] for m in ("bptt", "tbptt[k=2]", "tbptt[k=3]")}
    assert [len(v) for v in scores.values()] == [3, 3, 1]
    rows = table[(table["task"] == "adding") & (table["seq_len"] == 3)].set_index(["method", "params"])
    mean, sem = np.mean(scores["bptt"]), sps.sem(scores["bptt"])
    low, high = sps.t.interval(0.95, 2, loc=mean, scale=sem)
    assert rows.loc[("bptt", np.nan)][["score_ci_low", "score_ci_high"]].tolist() == pytest.approx([low, high])
    one = rows.loc[("tbptt", "k=3")]
    assert np.isnan(one["score_ci_low"]) and np.isnan(one["score_ci_high"]) and np.isnan(one["p_vs_best"])
    best = rows[rows["best"] == True]  # noqa: E712
    assert len(best) == 1 and best["score_mean"].iloc[0] == min(np.mean(v) for v in scores.values())
    # Welch's test of the other three-seed method against the best, as scipy computes it
    name = "bptt" if best.index[0][0] == "tbptt" else "tbptt[k=2]"
    other = rows.loc[("bptt", np.nan)] if name == "bptt" else rows.loc[("tbptt", "k=2")]
    if best.index[0] == ("tbptt", "k=3"):   # a one-seed best: nothing is tested
        assert np.isnan(other["p_vs_best"])
    else:
        best_name = "bptt" if best.index[0][0] == "bptt" else "tbptt[k=2]"
        p = sps.ttest_ind(scores[name], scores[best_name], equal_var=False).pvalue
        assert other["p_vs_best"] == pytest.approx(p, rel=1e-9)
        assert other["differs_from_best"] == (p < 0.05)
    footnote = (out / "summary.md").read_text()
    assert "alpha = 0.05" in footnote and "No test was possible" in footnote and "fewer than 3 seeds" in footnote
    assert "copy: accuracy >= 0.99" in footnote and "adding: mse <= 0.01" in footnote


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

"""Fidelity that compares like with like (issue 14): every method measured at the shared parameters
of one reference trajectory, gradient norms and clipping, run identity, divergence anywhere."""
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import cli, fidelity, locks, runner, store, summary, trajectory
from harness.method import Method, Updater
from harness.models import build_network

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "tests" / "sweep_helpers"
NOISY, FROZEN, POISONED, FOLLOWER = (str(HELPERS / f"{n}.py") for n in ("noisy", "frozen", "poisoned", "follower"))
# copy at T=3 has L = 23 steps; checkpoints at steps 0, 2 and 4
TINY = ["--tasks", "copy", "--seq-len", "3", "--steps", "4", "--seeds", "1", "--hidden", "4", "--batch", "2",
        "--eval-batches", "1", "--eval-every", "1", "--fidelity-points", "3", "--grad-samples", "2", "--quiet"]


def records(out) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "runs").glob("*.json"))]


def by_label(out) -> dict[str, dict]:
    return {r["method_label"]: r for r in records(out)}


def figures(entries, *keys):
    return [[e.get(k) for k in keys] for e in entries]


# --- the reference trajectory and the shared parameters ----------------------------------------
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four methods, none of them bptt: the sweep adds bptt's trajectory and runs it first."""
    out = tmp_path_factory.mktemp("shared")
    assert cli.main(["--methods", f"tbptt[k=2],uoro,{NOISY},{FROZEN},tbptt", *TINY, "--out", str(out)]) == 0
    return out, by_label(out)


def test_every_method_of_a_configuration_is_measured_at_the_same_parameters(sweep):
    out, runs = sweep
    assert set(runs) == {"bptt", "tbptt[k=2]", "uoro", "noisy", "frozen", "tbptt"}
    bptt = runs["bptt"]
    assert bptt["fidelity_reference"]["hash"] == bptt["hash"]        # the reference is its own trajectory
    norms = [e["exact_grad_norm"] for e in bptt["fidelity"]]
    assert len(set(norms)) == 3                                       # the trajectory moves: three points
    for label, r in runs.items():
        assert r["status"] == "ok"
        ref = r["fidelity_reference"]
        assert (ref["method"], ref["label"], ref["hash"], ref["status"]) == ("bptt", "bptt", bptt["hash"], "ok")
        assert ref["measured"] == "in the run"                        # the reference ran first
        assert [e["step"] for e in r["fidelity"]] == [0, 2, 4] == [e["step"] for e in r["fidelity_own"]]
        assert [e["exact_grad_norm"] for e in r["fidelity"]] == norms, label          # bitwise the same
        assert [e["reference_score"] for e in r["fidelity"]] == [e["score"] for e in bptt["fidelity_own"]]
        assert all(e["reference_solved"] is False for e in r["fidelity"])  # copy: accuracy >= 0.99
        for e in r["fidelity"]:
            assert e["grad_norm_ratio"] == pytest.approx(e["grad_norm"] / e["exact_grad_norm"], rel=1e-12)
    # at their own parameters the methods' networks differ, and so does |g*|
    assert runs["tbptt[k=2]"]["fidelity_own"][-1]["exact_grad_norm"] != norms[-1]
    table = pd.read_csv(out / "summary.csv")
    assert table["exact_grad_norm"].nunique() == 1 and (table["reference"] == "bptt").all()
    for col in ["grad_cosine_recurrent", "grad_cosine_recurrent_min", "grad_cosine_recurrent_max", "grad_cosine",
                "grad_rel_error", "exact_grad_norm", "grad_norm_ratio", "grad_cosine_recurrent_init",
                "grad_cosine_recurrent_own", "grad_cosine_own", "grad_rel_error_own", "clipped_fraction",
                "grad_norm_median", "reference", "diverged", "stale", "reference_solved"]:
        assert col in table.columns, col
    cols = list(table.columns)
    assert cols.index("grad_cosine_recurrent") < cols.index("grad_cosine")


def test_trajectories_are_tensors_only(sweep):
    out, runs = sweep
    for r in runs.values():
        states = torch.load(trajectory.path(out, r["hash"]), weights_only=True)
        assert sorted(states) == [0, 2, 4]
        assert all(isinstance(t, torch.Tensor) for s in states.values() for t in s.values())
    frozen = torch.load(trajectory.path(out, runs["frozen"]["hash"]), weights_only=True)
    assert all(torch.equal(frozen[0][k], frozen[4][k]) for k in frozen[0])      # it never moved


def test_a_method_that_never_updates_measures_like_its_estimator_at_the_shared_points(sweep):
    _, runs = sweep
    frozen, tbptt = runs["frozen"], runs["tbptt"]                     # the same estimator (k = 10 < L = 23)
    keys = ("cosine", "cosine_recurrent", "rel_error", "grad_norm", "exact_grad_norm")
    assert figures(frozen["fidelity"], *keys) == figures(tbptt["fidelity"], *keys)
    own = figures(frozen["fidelity_own"], *keys)
    assert own == [own[0]] * 3                                        # at its own parameters: the initialisation
    assert frozen["fidelity"][-1]["cosine_recurrent"] != frozen["fidelity_own"][-1]["cosine_recurrent"]
    assert frozen["fidelity"][-1]["cosine_recurrent"] < 1 - 1e-6      # not trivially exact
    assert frozen["training"]["updates"] == 0 and frozen["training"]["grad_norm_median"] is None


def test_the_pass_after_a_sweep_gives_what_the_run_would_have_measured(tmp_path, sweep):
    """A run that finishes before its reference (parallel executors) waits; the pass adds the same figures."""
    out, runs = sweep
    args = cli.make_parser().parse_args(["--methods", "tbptt[k=2]", *TINY, "--out", str(tmp_path)])
    ref, cfg = cli.build_configs(args)
    assert ref.method == "bptt" and cfg.method == "tbptt"
    first = runner.run_config(cfg, tmp_path)                          # no trajectory yet
    assert "fidelity" not in first and first["fidelity_reference"]["pending"]
    assert runner.fidelity_pass([ref, cfg], tmp_path) == {"measured": 0, "waiting": 1, "busy": 0, "errors": 0}
    runner.run_config(ref, tmp_path)
    with locks.run_lock(tmp_path, cfg.key()):      # another process writing the run now: left to it
        assert runner.fidelity_pass([ref, cfg], tmp_path) == {"measured": 0, "waiting": 0, "busy": 1, "errors": 0}
    assert "fidelity" not in store.load(tmp_path, cfg.key())
    assert runner.fidelity_pass([ref, cfg], tmp_path) == {"measured": 1, "waiting": 0, "busy": 0, "errors": 0}
    after = store.load(tmp_path, cfg.key())
    assert after["fidelity_reference"]["measured"] == "after the sweep"
    assert after["fidelity"] == runs["tbptt[k=2]"]["fidelity"]        # bitwise what the sweep measured in the run
    assert runner.fidelity_pass([ref, cfg], tmp_path)["measured"] == 0   # nothing left to do


def test_tbptt_with_k_at_least_L_is_exact_at_every_shared_checkpoint(tmp_path):
    assert cli.main(["--methods", "tbptt[k=30],tbptt[k=2]", *TINY, "--dtype", "float64", "--out", str(tmp_path)]) == 0
    runs = by_label(tmp_path)
    for e in runs["tbptt[k=30]"]["fidelity"]:
        assert abs(e["cosine_recurrent"] - 1) < 1e-10 and e["rel_error"] < 1e-10
        assert abs(e["grad_norm_ratio"] - 1) < 1e-10
    assert max(e["rel_error"] for e in runs["tbptt[k=2]"]["fidelity"]) > 1e-3   # truncation is seen


def test_reference_of_sab_is_sab_bptt_with_its_network_params(tmp_path, capsys):
    args = cli.make_parser().parse_args(["--methods", "sab[k_trunc=3,k_top=2]", *TINY])
    ref, cfg = cli.build_configs(args)
    assert (ref.method, ref.method_params) == ("sab_bptt", {"k_top": 2})
    typed = cli.build_configs(cli.make_parser().parse_args(["--methods", "sab_bptt[k_top=2,k_att=2]", *TINY]))
    assert [c.key() for c in typed] == [ref.key()]                    # the same run as typed by a user
    assert cli.main(["--methods", "sab[k_trunc=3,k_top=2]", *TINY, "--dry-run", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "to run (2): 1 of them reference trajectories" in text and "(reference trajectory)" in text
    assert cli.main(["--methods", "sab[k_trunc=3,k_top=2]", *TINY, "--no-reference", "--dry-run",
                     "--out", str(tmp_path)]) == 0
    assert "to run (1):" in capsys.readouterr().out


def test_no_reference_leaves_the_own_figures_and_says_so(tmp_path, capsys):
    assert cli.main(["--methods", "tbptt[k=2]", *TINY, "--no-reference", "--out", str(tmp_path)]) == 0
    (r,) = records(tmp_path)
    assert "fidelity" not in r and r["fidelity_reference"]["pending"] and len(r["fidelity_own"]) == 3
    assert "1 runs have no shared-parameter fidelity" in capsys.readouterr().err
    row = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    assert math.isnan(row["grad_cosine_recurrent"]) and not math.isnan(row["grad_cosine_recurrent_own"])
    assert row["fidelity_seeds"] == 0


def test_a_reference_that_diverges_gives_shared_figures_where_it_was_finite(tmp_path):
    assert cli.main(["--methods", f"{POISONED}[at=3],{FOLLOWER}", *TINY, "--out", str(tmp_path)]) == 0
    runs = by_label(tmp_path)
    ref, follower = runs["poisoned[at=3]"], runs["follower"]
    assert ref["status"] == "diverged" and ref["diverged_at"] == 3
    assert follower["status"] == "ok" and follower["fidelity_reference"]["status"] == "diverged"
    assert [e["step"] for e in follower["fidelity"]] == [0, 2]        # no shared parameters after step 3
    row = pd.read_csv(tmp_path / "summary.csv").set_index("method").loc["follower"]
    assert math.isnan(row["grad_cosine_recurrent"]) and row["fidelity_seeds"] == 0   # none at the end


# --- norms and clipping --------------------------------------------------------------------------
def test_updater_records_the_pre_clip_norm():
    torch.manual_seed(0)
    net = build_network("rnn", 2, 3, 2).double()
    for clip in (1e-3, None):
        grads = [torch.randn_like(p) for p in net.parameters()]
        expected = float(torch.cat([g.reshape(-1) for g in grads]).norm())
        before = [p.detach().clone() for p in net.parameters()]
        updater = Updater(net, torch.optim.SGD(net.parameters(), lr=1.0), clip)
        updater.apply([g.clone() for g in grads])
        (norm,) = updater.take_norms().tolist()
        assert norm == pytest.approx(expected, rel=1e-12)
        step = float(torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, net.parameters())]).norm())
        assert step == pytest.approx(min(expected, clip or math.inf), rel=1e-5)
        assert len(updater.take_norms()) == 0


@pytest.mark.parametrize("clip,fraction", [("1e-9", 1.0), ("0", 0.0)])
def test_clipped_fraction(tmp_path, clip, fraction):
    assert cli.main(["--methods", "tbptt[k=2]", *TINY, "--clip", clip, "--no-reference", "--out", str(tmp_path)]) == 0
    (r,) = records(tmp_path)
    training = r["training"]
    assert training["updates"] == 4 * 12 and training["clipped_fraction"] == fraction   # ceil(23 / 2) windows
    assert training["grad_norm_median"] > 0 and training["nonfinite_updates"] == 0
    assert pd.read_csv(tmp_path / "summary.csv")["clipped_fraction"][0] == fraction


# --- divergence ----------------------------------------------------------------------------------
def test_divergence_on_the_last_update(tmp_path, capsys):
    """The training loss is finite at every step (it is computed before the update): only the
    evaluation after the last update sees the NaN weights."""
    assert cli.main(["--methods", f"{POISONED}[at=4]", *TINY, "--no-reference", "--out", str(tmp_path)]) == 0
    (r,) = records(tmp_path)
    assert r["status"] == "diverged" and r["diverged_at"] == 4 and "non-finite test loss" in r["error"]
    assert all(math.isfinite(c["train_loss"]) for c in r["curve"] if c["train_loss"] is not None)
    table = pd.read_csv(tmp_path / "summary.csv")
    assert (table["diverged"][0], table["failed"][0], table["seeds"][0]) == (1, 0, 0)
    assert math.isnan(table["score_mean"][0])
    assert "1 runs diverged" in (tmp_path / "summary.md").read_text()
    assert "diverged: poisoned[at=4]" in capsys.readouterr().err
    assert not store.is_finished(tmp_path, r["hash"])                  # retried by the next run of the command


def test_divergence_of_the_issue_command(tmp_path):
    """`--optimizer sgd --lr 1e12 --clip 0 --steps 2` was recorded ok with a NaN score."""
    assert cli.main(["--methods", "bptt", "--tasks", "adding", "--seq-len", "10", "--steps", "2", "--seeds", "1",
                     "--optimizer", "sgd", "--lr", "1e12", "--clip", "0", "--quiet", "--out", str(tmp_path)]) == 0
    (r,) = records(tmp_path)
    assert r["status"] == "diverged" and r["diverged_at"] == 2


def test_non_finite_gradients_are_named():
    torch.manual_seed(0)
    task, batch = _batch()

    class NaNMethod(Method):
        name = "nan_estimate"

        def gradient(self, net, batch, rng):
            return 0.0, [torch.full_like(p, math.nan) for p in net.parameters()]

    net = build_network("rnn", task.input_size, 3, task.output_size).double()
    assert fidelity.measure(NaNMethod(), net, batch, 0, 1)["nonfinite"] == "estimate"
    with torch.no_grad():
        next(net.parameters()).fill_(math.nan)
    assert fidelity.measure(NaNMethod(), net, batch, 0, 1)["nonfinite"] == "reference"


def _batch():
    from harness.registry import TASKS
    task = TASKS.get("adding")(4)
    return task, next(task.stream(0, "fidelity", 2)).to(dtype=torch.float64)


# --- aggregation ---------------------------------------------------------------------------------
def fake(seed, status="ok", score=0.5, cos=0.9, finished="2024-01-01T00:00:00", method="tbptt", **extra):
    entry = {"step": 10, "cosine": cos, "cosine_recurrent": cos, "rel_error": 0.1, "exact_grad_norm": 2.0,
             "grad_norm": 1.0, "grad_norm_ratio": 0.5, "reference_score": 0.3, "reference_solved": False}
    return {"hash": f"{method}{seed}{finished}", "status": status, "method_label": method, "finished": finished,
            "config": {"method": method, "method_params": {}, "task": "copy", "task_params": {}, "seq_len": 5,
                       "eval_seq_len": None, "cell": "lstm", "hidden": 4, "steps": 10, "lr": 1e-3, "clip": 1.0,
                       "optimizer": "adam", "batch": 2, "seed": seed, "threads": 1, "device": "cpu"},
            "final": {"score": score}, "metric": "accuracy", "higher_is_better": True, "n_params": 1,
            "fidelity": [dict(entry, step=0), entry], "fidelity_own": [dict(entry, step=0), entry],
            "fidelity_reference": {"method": "bptt", "label": "bptt", "hash": "x"},
            "training": {"clipped_fraction": 0.25, "grad_norm_median": 3.0}, **extra}


def test_cosines_over_seeds_are_median_and_range_never_a_mean():
    table = summary.summarise([fake(0, cos=0.996), fake(1, cos=-0.189), fake(2, cos=0.5)])
    row = table.iloc[0]
    assert (row["grad_cosine_recurrent"], row["grad_cosine_recurrent_min"], row["grad_cosine_recurrent_max"]) == \
        (0.5, -0.189, 0.996)
    assert row["grad_cosine_recurrent_seeds"] == [0.996, -0.189, 0.5]
    assert row["fidelity_seeds"] == 3 and row["reference"] == "bptt" and row["reference_solved"] == 0.0
    shown = summary.display(table).iloc[0]
    assert shown["cos rec"] == "0.500 (-0.189–0.996)"


def test_diverged_runs_are_counted_apart_and_no_mean_takes_a_nan():
    old_nan = fake(2, score=float("nan"))                              # written `ok` before this check existed
    table = summary.summarise([fake(0, score=0.4), fake(1, status="diverged", score=float("nan")), old_nan,
                               fake(3, status="failed")])
    row = table.iloc[0]
    assert (row["seeds"], row["diverged"], row["failed"]) == (1, 2, 1)
    assert row["score_mean"] == 0.4
    assert summary.status(old_nan) == "diverged"
    partial = [fake(0, time={"ms_per_step": 2.0}), fake(1, time={"ms_per_step": 4.0})]
    assert summary.summarise(partial).iloc[0]["time_ms_per_step"] == 3.0
    del partial[1]["time"]                                              # one seed lacks the figure
    assert math.isnan(summary.summarise(partial).iloc[0]["time_ms_per_step"])   # not the other seed's 2.0


def test_old_records_are_read_as_own_parameter_figures():
    old = fake(0)
    old["fidelity"] = [dict(e, ref_norm=2.0) for e in old.pop("fidelity_own")]
    del old["fidelity_reference"]
    row = summary.record_row(old)
    assert row["grad_cosine_recurrent"] is None and row["grad_cosine_recurrent_own"] == 0.9
    assert row["exact_grad_norm_own"] == 2.0 and row["reference"] is None


# --- run identity --------------------------------------------------------------------------------
def test_duplicates_collapse_to_the_newest():
    recs = [fake(0, finished="2024-01-01T00:00:0" + str(i), score=i / 10) for i in (3, 1, 2)] + [fake(1)]
    kept = store.newest(recs)
    assert len(kept) == 2
    (zero,) = [r for r in kept if r["config"]["seed"] == 0]
    assert zero["final"]["score"] == 0.3 and zero["stale_ignored"] == 2
    assert store.newest(kept) == kept                                   # idempotent
    row = summary.summarise(recs).iloc[0]
    assert (row["seeds"], row["stale"]) == (2, 2)


def test_a_method_file_moved_elsewhere_is_the_same_method(tmp_path, capsys, monkeypatch):
    from harness.registry import METHODS

    def as_a_new_process(*args):
        """One process registers one method named `noisy`: forget it, as a user's next command would."""
        monkeypatch.setattr(METHODS, "_entries", {k: v for k, v in METHODS.entries.items() if k != "noisy"})
        monkeypatch.setattr(METHODS, "_external", {})
        return cli.main(list(args))

    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
        shutil.copy(NOISY, tmp_path / d / "noisy.py")
    with open(tmp_path / "b" / "noisy.py", "a") as f:                  # other code: a different code hash
        f.write("\n# an edit\n")
    out = tmp_path / "out"
    tiny = [*TINY, "--no-reference", "--out", str(out)]
    assert as_a_new_process("--methods", str(tmp_path / "a" / "noisy.py"), *tiny) == 0
    # the same file elsewhere, given by a relative path: the same run, not run again
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert as_a_new_process("--methods", "c/noisy.py", *tiny, "--dry-run") == 0
    assert "to run (0):" in capsys.readouterr().out
    (first,) = records(out)
    first.update(finished="2000-01-01T00:00:00", final={**first["final"], "score": 0.5})   # older, and told apart
    store.save(out, first)
    # the same name, other code (the edited copy): a new record of the same run
    assert as_a_new_process("--methods", "b/noisy.py", *tiny) == 0
    second = [r for r in records(out) if r["hash"] != first["hash"]][0]
    assert second["code_hash"] != first["code_hash"] and store.identity(second) == store.identity(first)
    assert second["config"]["method"] == "b/noisy.py"                 # the path stays in the config, for loading
    capsys.readouterr()
    assert as_a_new_process("--collect", "--out", str(out)) == 0
    assert "warning: 1 older records" in capsys.readouterr().err
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 1 and (table["seeds"][0], table["stale"][0]) == (1, 1)
    assert table["score_mean"][0] == second["final"]["score"] != 0.5
    assert "1 older records" in (out / "summary.md").read_text()
    # selecting by the other path finds the same run: records are matched by what they are, not by their code
    assert as_a_new_process("--collect", "--methods", "a/noisy.py", *tiny) == 0
    assert pd.read_csv(out / "summary.csv")["stale"][0] == 1


def test_collect_that_matches_nothing_says_why(tmp_path, capsys):
    out = str(tmp_path)
    assert cli.main(["--methods", "bptt", *TINY, "--hidden", "3", "--out", out]) == 0
    capsys.readouterr()
    i = TINY.index("--hidden")
    assert cli.main(["--collect", "--methods", "bptt", *TINY[:i], *TINY[i + 2:], "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--hidden: hidden 64 (the default), records have 3" in err
    assert cli.main(["--collect", "--methods", "bptt", *TINY, "--hidden", "3", "--steps", "5", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--steps: steps 5, records have 4" in err and "(the default)" not in err

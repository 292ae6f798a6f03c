"""Sweeps: grids, sweep files, executors giving the same records, failures, interruption, resume,
checkpoints, tuning on the validation stream, --collect."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness import checkpoint, cli, store, tuning
from harness.config import ConfigError, parse_spec_list

ROOT = Path(__file__).resolve().parent.parent
NOISY = str(ROOT / "tests" / "sweep_helpers" / "noisy.py")
TINY_WITH_REFERENCE = ["--tasks", "adding", "--seq-len", "3", "--steps", "3", "--seeds", "1", "--hidden", "3",
                       "--batch", "2", "--eval-batches", "1", "--fidelity-points", "2", "--quiet"]
# most sweeps here count runs: without the bptt reference trajectories (tests/test_shared_fidelity.py has those)
TINY = [*TINY_WITH_REFERENCE, "--no-reference"]


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in (Path(out) / "runs").glob("*.json")}


def comparable(r):
    """What must be bitwise equal between two runs of one configuration (not wall-clock times)."""
    return ([{k: v for k, v in c.items() if k != "wall_s"} for c in r["curve"]], r.get("fidelity"), r["fidelity_own"],
            r["training"], r["final"], r["params_sha"], r["status"], r["memory"]["saved_bytes"])


# --- grids ---------------------------------------------------------------------------------------
def test_grid_expands_to_the_cartesian_product_in_order():
    specs = parse_spec_list("tbptt[k=[5,10,20]],sab[k_trunc=[5,10],k_top=5,variant=[paper,released]],bptt")
    got = [(s.name, s.params) for s in specs]
    assert got[:3] == [("tbptt", {"k": "5"}), ("tbptt", {"k": "10"}), ("tbptt", {"k": "20"})]
    assert got[3:7] == [("sab", {"k_trunc": a, "k_top": "5", "variant": b})
                        for a in ("5", "10") for b in ("paper", "released")]
    assert got[7] == ("bptt", {})


@pytest.mark.parametrize("text,message", [
    ("tbptt[k=[]]", "k=[] is an empty list"),
    ("tbptt[k=[5,,10]]", "has an empty item"),
    ("tbptt[k=[5,[6,7]]]", "lists do not nest"),
    ("tbptt[k=[5,5]]", "repeats 5"),
    ("tbptt[k=[5,10]x]", "a list of values is written [v1,v2,...]"),
    ("tbptt[k=x[5]]", "a list of values is written"),
    ("tbptt[k=[5,10]", "unbalanced '['"),
    ("tbptt[k=[5,10]]]", "unbalanced ']'"),
    ("tbptt[k=5,k=[1,2]]", "repeated key"),
    ("tbptt[[k=5]]", "expected key=value"),
])
def test_malformed_grid(text, message):
    with pytest.raises(ConfigError, match=None) as info:
        parse_spec_list(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_grid_size_and_duplicates_on_the_command_line(tmp_path, capsys):
    # tbptt[k=10] is tbptt at its default: one run, not two
    assert cli.main(["--methods", "tbptt[k=[2,3]],tbptt,tbptt[k=10]", "--tasks", "copy,adding",
                     "--seq-len", "3,4", "--seeds", "2", "--dry-run", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    # 3 methods x 2 tasks x 2 T x 2 seeds, and the bptt reference trajectory of each task, T and seed
    assert "to run (32): 8 of them reference trajectories" in text and "already done (0):" in text
    assert not (tmp_path / "runs").exists()


# --- sweep files ---------------------------------------------------------------------------------
YAML = """\
methods:
  tbptt: {k: [2, 3]}
  bptt: {}
tasks: adding
seq_len: [3, 4]
seeds: 2
hidden: 3
"""

TOML = """\
methods = ["tbptt[k=[2,3]]", "bptt"]
tasks = "adding"
seq-len = [3, 4]
seeds = 2
hidden = 3
"""


@pytest.mark.parametrize("name,text", [("sweep.yaml", YAML), ("sweep.toml", TOML)])
def test_sweep_file_equals_command_line_and_is_overridden(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    out = str(tmp_path / "out")
    assert cli.main(["--config", str(path), "--dry-run", "--out", out]) == 0
    from_file = capsys.readouterr().out
    assert cli.main(["--methods", "tbptt[k=[2,3]],bptt", "--tasks", "adding", "--seq-len", "3,4", "--seeds", "2",
                     "--hidden", "3", "--dry-run", "--out", out]) == 0
    assert capsys.readouterr().out == from_file          # same runs, same hashes
    assert "to run (12):" in from_file
    assert cli.main(["--config", str(path), "--seeds", "1", "--methods", "bptt", "--dry-run", "--out", out]) == 0
    assert "to run (2):" in capsys.readouterr().out       # the command line wins


def test_the_readme_sweep_file_parses(tmp_path, capsys):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "sweep.yaml").write_text(block)
    args = cli.parse_args(["--config", str(tmp_path / "sweep.yaml"), "--executor", "local"])
    assert args.executor == "local" and args.slurm_partition == "gpu" and args.slurm_time == 120
    assert args.seq_len == [100, 200, 400] and args.tune == {"lr": [1e-4, 3e-4, 1e-3, 3e-3]}
    assert dict(args.slurm_param) == {"mem_gb": 16, "slurm_constraint": "volta"}
    assert cli.main(["--config", str(tmp_path / "sweep.yaml"), "--executor", "local", "--dry-run",
                     "--out", str(tmp_path / "out")]) == 0
    assert "to run (480):" in capsys.readouterr().out      # (3 tbptt + bptt) x 2 tasks x 3 T x 5 seeds x 4 lr


@pytest.mark.parametrize("name,text,message", [
    ("s.yaml", "methods: bptt\nseq_lenn: 5\n", "s.yaml line 2: seq_lenn: unknown option (did you mean 'seq_len'?)"),
    ("s.yaml", "methods: bptt\nseq_len: 0\n", "s.yaml line 2: seq_len: '0' must be a positive integer"),
    ("s.yaml", "methods: bptt\nseeds: many\n", "s.yaml line 2: seeds: 'many' is not an integer"),
    ("s.yaml", "methods: bptt\ncell: lstn\n", "s.yaml line 2: cell: 'lstn' is not one of"),
    ("s.yaml", "methods: bptt\nhidden: [3, 4]\n", "s.yaml line 2: hidden: expected a single value"),
    ("s.yaml", "methods: bptt\nquiet: maybe\n", "s.yaml line 2: quiet: expected true or false"),
    ("s.yaml", "methods: bptt\nlr:\n", "s.yaml line 2: lr: no value"),
    ("s.yaml", "methods: [bptt\n", "s.yaml line 2: cannot read YAML"),
    ("s.yaml", "methods: bptt\n  tasks: copy\n", "s.yaml line 2: cannot read YAML"),
    ("s.yaml", "- bptt\n- tbptt\n", "expected option: value pairs at the top level, found a list"),
    ("s.yaml", "", "the sweep file is empty"),
    ("s.yaml", "methods:\n  tbptt: 5\n", "tbptt: expected a mapping of option: value"),
    ("s.yaml", "methods: bptt\nconfig: other.yaml\n", "config: unknown option"),
    ("s.yaml", "methods: bptt\nslurm_param: mem_gb=4\n", "slurm_param: expected a mapping"),
    ("s.yaml", "methods: bptt\ntune: {lr: []}\n", "tune: empty list"),
    ("s.toml", "methods = \"bptt\"\nseq_len = [3,\n", "s.toml: cannot read TOML"),
    ("s.toml", "methods = \"bptt\"\nsteps = -1\n", "s.toml line 2: steps: '-1' must be a positive integer"),
    ("s.json", "{}", "expected .yaml, .yml or .toml"),
])
def test_malformed_sweep_file_is_one_line_exit_2(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    assert cli.main(["--config", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "runs").exists()


def test_grid_errors_inside_the_sweep_file_name_the_key(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("tasks: adding\nmethods:\n  tbptt: {k: [2, 0]}\n")
    assert cli.main(["--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "k=0 is not a positive integer" in capsys.readouterr().err
    assert cli.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--tune", "lr=[1e-3,-1]"], "lr='-1' is not a positive number"),
    (["--tune", "momentum=[0.9]"], "unknown option for --tune 'momentum'"),
    (["--tune", "optimizer=[adam,adamw]"], "unknown optimizer 'adamw'"),
    (["--tune", "lr=[1e-3"], "unbalanced '['"),
    (["--executor", "joblib", "-j", "0"], "must be a positive integer"),
    (["--executor", "slurm", "--slurm-cluster", "debug", "--slurm-param", "constrain=x"],
     "did you mean 'constraint'?"),
    (["--executor", "slurm", "--slurm-cluster", "debug", "--slurm-param", "mem_gb=lots"], "mem_gb"),
    (["--executor", "slurm", "--slurm-cluster", "debug", "--slurm-param", "novalue"], "expected key=value"),
    (["--executor", "slurm", "--slurm-time", "1:0"], "expected minutes, H:MM:SS or D-H:MM:SS"),
    (["--checkpoint-every", "0"], "must be a positive integer"),
    ([], None),  # no --methods and no file
])
def test_bad_sweep_options(tmp_path, capsys, args, message):
    methods = [] if message is None else ["--methods", "bptt"]
    assert cli.main([*methods, *args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert (message or "--methods is required") in err and len(err.splitlines()) == 1, err


# --- executors -----------------------------------------------------------------------------------
GRID = ["--methods", f"tbptt[k=2],{NOISY}", *TINY_WITH_REFERENCE]   # and their bptt reference


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    assert cli.main([*GRID, "--out", str(out)]) == 0
    return out, records(out)


@pytest.mark.parametrize("backend", [
    ["--executor", "slurm", "--slurm-cluster", "debug"],
    pytest.param(["--executor", "joblib", "-j", "2"], marks=pytest.mark.slow),
    pytest.param(["--executor", "slurm", "--slurm-cluster", "local", "--slurm-array-parallelism", "2",
                  "--slurm-time", "5", "--slurm-param", "mem_gb=1"], marks=pytest.mark.slow),
], ids=["submitit-debug", "joblib", "submitit-local"])
def test_backends_give_the_same_records_as_local(tmp_path, local_sweep, backend):
    local_out, local = local_sweep
    assert len(local) == 3 and all(r["status"] == "ok" for r in local.values())
    assert all("fidelity" in r for r in local.values())
    out = tmp_path / "out"
    assert cli.main([*GRID, *backend, "--out", str(out)]) == 0
    recs = records(out)
    assert set(recs) == set(local)                                    # same configurations, same hashes
    for key, r in recs.items():
        assert comparable(r) == comparable(local[key]), r["method_label"]
        assert r["executor"]["name"] == backend[1]
    parallel = "debug" not in backend                                 # debug: one job at a time, here
    assert ("not comparable" in (out / "summary.md").read_text()) == parallel
    assert "not comparable" not in (local_out / "summary.md").read_text()
    # finished runs are not dispatched again, whatever the backend
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert cli.main([*GRID, *backend, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == mtimes


def test_failed_and_diverged_runs_are_recorded_the_sweep_goes_on_and_reruns_retry(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--methods", f"{NOISY}[mode=[raise,diverge,ok]]", *TINY, "--out", str(out)]
    assert cli.main(args) == 1                                   # a run failed: exit code 1 (diverged is a result)
    by_mode = {r["config"]["method_params"].get("mode", "ok"): r for r in records(out).values()}
    assert by_mode["raise"]["status"] == "failed" and "deliberate failure at step 2" in by_mode["raise"]["error"]
    assert by_mode["diverge"]["status"] == "diverged"
    assert "non-finite training loss nan at step 2" in by_mode["diverge"]["error"]
    assert by_mode["ok"]["status"] == "ok"
    assert not store.is_finished(out, by_mode["raise"]["hash"])
    capsys.readouterr()
    assert cli.main([*args, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "to run (2):" in listing and "already done (1):" in listing
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    time.sleep(0.01)
    assert cli.main(args) == 1                                   # retries the failed and diverged ones only
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert after[by_mode["ok"]["hash"] + ".json"] == mtimes[by_mode["ok"]["hash"] + ".json"]
    assert all(after[by_mode[m]["hash"] + ".json"] != mtimes[by_mode[m]["hash"] + ".json"] for m in ("raise", "diverge"))
    assert cli.main([*args, "--force"]) == 1                     # --force reruns everything selected
    forced = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert all(forced[k] != after[k] for k in after)


@pytest.mark.slow
@pytest.mark.parametrize("backend", [["--executor", "slurm", "--slurm-cluster", "local"],
                                     ["--executor", "joblib", "-j", "2"]], ids=["submitit-local", "joblib"])
def test_a_killed_job_is_recorded_failed_and_the_others_finish(tmp_path, capsys, backend):
    out = tmp_path / "out"
    # with joblib the killed worker takes the pool down with it: the runs in flight are retried alone
    args = ["--methods", f"{NOISY}[mode=[ok,die],sleep=[0,0.01]]", *TINY, *backend, "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWEEP_TEST_SLEEP", "1")
        assert cli.main(args) == 1                                    # two runs failed
    by_mode = {}
    for r in records(out).values():
        by_mode.setdefault(r["config"]["method_params"].get("mode", "ok"), []).append(r)
    assert len(by_mode["ok"]) == 2 and all(r["status"] == "ok" for r in by_mode["ok"])
    assert len(by_mode["die"]) == 2
    assert all(r["status"] == "failed" and "died" in r["error"] for r in by_mode["die"])
    capsys.readouterr()
    assert cli.main([*args, "--dry-run"]) == 0
    assert "to run (2):" in capsys.readouterr().out                  # the killed runs are retried next time


@pytest.mark.slow
def test_joblib_stops_with_the_reason_when_every_worker_dies(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--methods", f"{NOISY}[mode=die]", *TINY[:6], "--seeds", "4", *TINY[8:], "--executor", "joblib",
            "-j", "2", "--out", str(out)]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "3 runs killed their worker process alone and none finished" in err and "SIGKILL" in err
    assert not [r for r in records(out).values() if r["status"] == "ok"]


@pytest.mark.parametrize("sig,backend", [
    (signal.SIGTERM, []), pytest.param(signal.SIGINT, [], marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, ["--executor", "joblib", "-j", "2"], marks=pytest.mark.slow),
], ids=["SIGTERM", "SIGINT", "SIGTERM-joblib"])
def test_interrupted_sweep_loses_nothing_and_a_rerun_completes_it(tmp_path, sig, backend):
    out = tmp_path / "out"
    args = ["--methods", f"{NOISY}[sleep=[0,0.5]]", "--seeds", "2", *TINY[:6], *TINY[8:], *backend,
            "--out", str(out)]
    env = {**os.environ, "SWEEP_TEST_SLEEP": "1"}
    # a shell's background job inherits SIGINT ignored, and Python keeps it so: restore the default
    proc = subprocess.Popen([sys.executable, "run_all.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 90
    while len(list((out / "runs").glob("*.json"))) < 2 and time.time() < deadline:  # the two sleep=0 runs
        time.sleep(0.1)
    time.sleep(0.3)                                                                 # inside a sleeping run
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: 2 of 4 runs are finished" in err and "Traceback" not in err
    done = records(out)
    assert len(done) == 2 and all(r["status"] == "ok" for r in done.values())
    assert not [p for p in (out / "runs").iterdir() if p.suffix != ".json" and p.name != ".write-test"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert cli.main(args) == 0                       # the rerun (no sleeping now) does only the rest
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json") if p.name in mtimes} == mtimes
    final = records(out)
    assert len(final) == 4 and all(r["status"] == "ok" for r in final.values())
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 2 and (table["seeds"] == 2).all()


# --- checkpoints ---------------------------------------------------------------------------------
def test_resume_from_checkpoint_is_bitwise_identical(tmp_path, monkeypatch):
    args = ["--methods", NOISY, *TINY, "--steps", "7", "--eval-every", "1", "--checkpoint-every", "2"]
    assert cli.main([*args, "--out", str(tmp_path / "whole")]) == 0
    saves, original = [], checkpoint.save

    def save_then_die(file, state):
        original(file, state)
        saves.append(state["step"])
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C just after the checkpoint at step 4
            time.sleep(5)                         # (the handler raises before this ends)

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    assert cli.main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert saves == [2, 4] and not records(tmp_path / "cut")
    assert len(list((tmp_path / "cut" / "checkpoints").glob("*.pt"))) == 1
    monkeypatch.setattr(checkpoint, "save", original)
    assert cli.main([*args, "--out", str(tmp_path / "cut")]) == 0
    (whole,), (cut,) = records(tmp_path / "whole").values(), records(tmp_path / "cut").values()
    assert cut["resumed_from_step"] == 4 and "resumed_from_step" not in whole
    assert comparable(cut) == comparable(whole)
    assert not list((tmp_path / "cut" / "checkpoints").glob("*.pt"))    # removed once the record is written
    # without a checkpoint the same configuration is the same run (the schedule is not part of the hash)
    assert cli.main(["--methods", NOISY, *TINY, "--steps", "7", "--eval-every", "1", "--dry-run",
                     "--out", str(tmp_path / "whole")]) == 0


def test_resume_would_differ_without_the_method_state(tmp_path, monkeypatch):
    """The check above can fail: drop the method's state on resume and the result changes."""
    from harness.method import Method
    args = ["--methods", NOISY, *TINY, "--steps", "6", "--eval-every", "1", "--checkpoint-every", "3"]
    assert cli.main([*args, "--out", str(tmp_path / "whole")]) == 0
    original = checkpoint.save

    def die(file, state):
        original(file, state)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    monkeypatch.setattr(checkpoint, "save", die)
    assert cli.main([*args, "--out", str(tmp_path / "cut")]) == 130
    monkeypatch.undo()
    from harness.registry import METHODS
    monkeypatch.setattr(METHODS.get(NOISY), "load_state_dict", Method.load_state_dict)
    assert cli.main([*args, "--out", str(tmp_path / "cut")]) == 0
    (whole,), (cut,) = records(tmp_path / "whole").values(), records(tmp_path / "cut").values()
    assert cut["params_sha"] != whole["params_sha"]


# --- tuning --------------------------------------------------------------------------------------
def fake(method, lr, seed, val, test, higher=True):
    return {"hash": f"{method}{lr}{seed}", "status": "ok", "method_label": method, "higher_is_better": higher,
            "config": {"method": method, "method_params": {}, "task": "copy", "task_params": {}, "seq_len": 5,
                       "eval_seq_len": None, "cell": "lstm", "hidden": 4, "lr": lr, "clip": 1.0,
                       "optimizer": "adam", "batch": 2, "seed": seed, "threads": 1, "device": "cpu"},
            "final": {"score": test, "validation_score": val}, "n_params": 1, "metric": "accuracy"}


def test_tuning_picks_on_validation_not_test():
    recs = [fake("a", 1e-3, s, val=0.9, test=0.1) for s in (0, 1)]          # best on validation
    recs += [fake("a", 1e-2, s, val=0.5, test=0.99) for s in (0, 1)]        # best on test: must not win
    recs += [fake("b", 1e-3, s, val=0.2, test=0.2) for s in (0, 1)]
    recs += [fake("b", 1e-2, 0, val=0.8, test=0.7), fake("b", 1e-2, 1, val=0.6, test=0.7)]
    chosen, table = tuning.select(recs)
    picked = {(r["config"]["method"], r["config"]["lr"]) for r in chosen}
    assert picked == {("a", 1e-3), ("b", 1e-2)} and len(chosen) == 4
    assert {r["tuned"] for r in chosen} == {"lr=0.001", "lr=0.01"}
    assert table["chosen"].sum() == 2 and len(table) == 4
    low = [fake("m", lr, 0, val=v, test=0, higher=False) for lr, v in ((1e-3, 0.3), (1e-2, 0.1))]
    assert tuning.select(low)[0][0]["config"]["lr"] == 1e-2              # mse: lower is better
    untuned = [fake("a", 1e-3, s, val=0.5, test=0.5) for s in (0, 1)]
    assert all("tuned" not in r for r in tuning.select(untuned)[0])



def test_tuning_does_not_pick_a_value_where_a_seed_diverged():
    """Its mean is over the seeds that survived it: one lucky seed must not win over three finished ones."""
    recs = [fake("a", 1e-1, 0, val=0.99, test=0.99)]
    recs += [{**fake("a", 1e-1, s, val=None, test=float("nan")), "status": "diverged"} for s in (1, 2)]
    recs += [fake("a", 1e-3, s, val=0.8, test=0.8) for s in (0, 1, 2)]
    assert {r["config"]["lr"] for r in tuning.select(recs)[0]} == {1e-3}
    only = [fake("a", 1e-1, 0, val=0.9, test=0.9), {**fake("a", 1e-1, 1, val=None, test=0), "status": "diverged"},
            fake("a", 1e-3, 0, val=0.5, test=0.5), {**fake("a", 1e-3, 1, val=None, test=0), "status": "failed"}]
    assert {r["config"]["lr"] for r in tuning.select(only)[0]} == {1e-1}   # every value lost a seed: by the mean

def test_tune_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["--methods", "bptt", *TINY, "--seeds", "2", "--tune", "lr=[1e-3,3e-2]", "--out", str(out)]) == 0
    recs = list(records(out).values())
    assert len(recs) == 4 and all("validation_score" in r["final"] for r in recs)
    val = {lr: sum(r["final"]["validation_score"] for r in recs if r["config"]["lr"] == lr) / 2 for lr in (1e-3, 3e-2)}
    best = min(val, key=val.get)                                         # adding: MSE, lower is better
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 1 and table["tuned"][0] == f"lr={best:g}"
    test_at_best = [r["final"]["score"] for r in recs if r["config"]["lr"] == best]
    assert table["score_mean"][0] == pytest.approx(sum(test_at_best) / 2, rel=0, abs=1e-12)
    assert "tuned" in capsys.readouterr().out and (out / "tuning.csv").exists()


# --- collect and the configuration hash ----------------------------------------------------------
def test_collect_builds_tables_from_records_only(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["--collect", "--out", str(out)]) == 2
    assert "no records" in capsys.readouterr().err
    assert cli.main(["--methods", "tbptt[k=[1,2]]", *TINY, "--out", str(out)]) == 0
    before = (out / "summary.csv").read_text()
    for name in ("summary.csv", "summary.md", "summary.tex"):
        (out / name).unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert cli.main(["--collect", "--out", str(out)]) == 0
    # the same rows; --collect reads the records in file (hash) order, a run lists them in config order
    assert sorted((out / "summary.csv").read_text().splitlines()) == sorted(before.splitlines())
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == mtimes
    assert cli.main(["--collect", "--methods", "tbptt[k=1]", *TINY, "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "summary.csv")) == 1                 # only the selected runs
    assert cli.main(["--collect", "--methods", "bptt", *TINY, "--out", str(out)]) == 2   # none recorded


def load_module(path, name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_editing_a_method_or_what_it_builds_on_changes_the_source_hash(tmp_path):
    from harness.registry import TASKS
    source = Path(NOISY).read_text()
    (tmp_path / "a.py").write_text(source)
    (tmp_path / "b.py").write_text(source + "\n# an edit that changes nothing measured still reruns\n")
    (tmp_path / "c.py").write_text("from noisy_a import Noisy\n\nclass Louder(Noisy):\n    name = 'louder'\n")
    a, b = load_module(tmp_path / "a.py", "noisy_a").Noisy, load_module(tmp_path / "b.py", "noisy_b").Noisy
    louder = load_module(tmp_path / "c.py", "louder_c").Louder
    task = TASKS.get("adding")
    assert store.source_hash(a, task) == store.source_hash(a, task)
    assert store.source_hash(a, task) != store.source_hash(b, task)
    before = store.source_hash(louder, task)
    (tmp_path / "a.py").write_text(source + "\n# edited\n")
    import linecache
    linecache.clearcache()
    assert store.source_hash(louder, task) != before                  # its base class's file changed

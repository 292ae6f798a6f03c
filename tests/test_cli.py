"""run_all.py end to end on a tiny configuration, resuming, and every bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--tasks", "copy,adding", "--seq-len", "4", "--steps", "4", "--seeds", "2", "--hidden", "6",
        "--batch", "4", "--eval-batches", "1", "--quiet"]


def test_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--methods", "bptt,tbptt[k=3]", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| method" in printed and "tbptt[k=3]" in printed
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 2 * 2 * 2
    records = [json.loads(p.read_text()) for p in runs]
    assert all(r["status"] == "ok" for r in records)
    bptt = [r for r in records if r["config"]["method"] == "bptt"]
    assert all(abs(r["fidelity"][-1]["cosine"] - 1) < 1e-6 for r in bptt)
    for name in ("summary.md", "summary.csv", "summary.tex"):
        assert (out / name).stat().st_size > 0
    import pandas as pd
    table = pd.read_csv(out / "summary.csv")
    for col in ["method", "params", "task", "seq_len", "cell", "hidden", "n_params", "seeds", "metric",
                "score_mean", "score_std", "chance", "time_ms_per_step", "time_ms_per_update", "saved_bytes",
                "state_bytes", "cuda_peak_bytes", "grad_cosine", "grad_cosine_recurrent", "grad_rel_error"]:
        assert col in table.columns
    assert len(table) == 4 and (table["seeds"] == 2).all()

    mtimes = {p: p.stat().st_mtime_ns for p in runs}
    assert main(["--methods", "bptt,tbptt[k=3]", *TINY, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in runs} == mtimes     # nothing rerun
    assert "tbptt[k=3]" in (out / "summary.md").read_text()


def test_failed_record_is_rerun(tmp_path):
    out = tmp_path / "out"
    args = ["--methods", "bptt", "--tasks", "adding", "--seq-len", "3", "--steps", "2", "--seeds", "1",
            "--hidden", "3", "--batch", "2", "--quiet", "--out", str(out)]
    assert main(args) == 0
    (path,) = (out / "runs").glob("*.json")
    record = json.loads(path.read_text())
    record["status"] = "failed"
    path.write_text(json.dumps(record))
    assert main(args) == 0
    assert json.loads(path.read_text())["status"] == "ok"


def test_same_seed_same_record(tmp_path):
    args = ["--methods", "tbptt[k=2]", "--tasks", "copy", "--seq-len", "3", "--steps", "3", "--seeds", "1",
            "--hidden", "5", "--batch", "3", "--quiet"]
    curves = []
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        runs = sorted((tmp_path / name / "runs").glob("*.json"))      # tbptt and its bptt reference trajectory
        assert len(runs) == 2
        curves.append([(p.name, [(c["score"], c["test_loss"], c["train_loss"]) for c in r["curve"]], r["fidelity"],
                        r["fidelity_own"]) for p in runs for r in [json.loads(p.read_text())]])
    assert curves[0] == curves[1]


@pytest.mark.parametrize("args,message", [
    (["--methods", "bptx"], "unknown method 'bptx' (did you mean 'bptt'?)"),
    (["--methods", "bptt", "--tasks", "cpy"], "unknown task 'cpy' (did you mean 'copy'?)"),
    (["--methods", "tbptt[k=0]"], "k=0 is not a positive integer"),
    (["--methods", "tbptt[k=abc]"], "k='abc' is not a positive integer"),
    (["--methods", "tbptt[q=3]"], "unknown hyperparameter of method tbptt 'q'"),
    (["--methods", "tbptt[k=3"], "unbalanced '['"),
    (["--methods", "bptt", "--seq-len", "0"], "must be a positive integer"),
    (["--methods", "bptt", "--seq-len", "-5"], "must be a positive integer"),
    (["--methods", "bptt", "--cell", "lstn"], "invalid choice: 'lstn'"),
    (["--methods", "bptt", "--tasks", "copy[loss_on=everywhere]"], "is not one of all, targets"),
])
def test_bad_input_is_one_line_exit_2_nothing_trained(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main([*args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (out / "runs").exists() or not list((out / "runs").glob("*.json"))


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--methods", "bptt", "--out", str(blocker / "sub"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not writable" in err and len(err.splitlines()) == 1


def test_command_line_script_exit_code():
    proc = subprocess.run([sys.executable, "run_all.py", "--methods", "nope"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unknown method 'nope'" in proc.stderr

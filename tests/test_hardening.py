"""Records are data, faults are results (issue 15): each case the fault-injection session found,
tried the way a user would meet it. Numbers in the test names are the issue's cases."""
import dataclasses
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import types
import typing
from pathlib import Path

import pytest
import torch

from harness import checkpoint, cli, limits, locks, report, runner, schema, store
from harness.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
NOISY = str(ROOT / "tests" / "sweep_helpers" / "noisy.py")
TINY = ["--no-reference", "--tasks", "adding", "--seq-len", "3", "--steps", "3", "--hidden", "3", "--batch", "2",
        "--eval-batches", "1", "--fidelity-points", "2", "--quiet"]


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in (Path(out) / "runs").glob("*.json")}


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two finished runs (seeds 0 and 1) of tbptt on adding, with their records."""
    out = tmp_path_factory.mktemp("finished")
    assert cli.main(["--methods", "tbptt[k=2]", *TINY, "--seeds", "2", "--out", str(out)]) == 0
    return out, records(out)


def copy_of(finished, tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    for key, r in finished[1].items():
        (out / "runs" / f"{key}.json").write_text(json.dumps(r))
    return out


# --- 1. reading never executes -----------------------------------------------------------------
def test_1_reading_records_never_imports_the_code_they_name(finished, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "EXECUTED"
    planted = tmp_path / "planted.py"
    planted.write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))   # so that 'planted:Class' would import it too
    out = copy_of(finished, tmp_path)
    (r0, r1) = finished[1].values()
    for r, params, method, task in ((r0, {"k": 3}, str(planted), "planted:Task"),
                                    (r1, {}, "planted:Method", str(planted))):
        r = json.loads(json.dumps(r))   # a varied hyperparameter: the scaling figure reads defaults
        r["config"]["method"], r["config"]["task"] = method, task
        r["config"]["method_params"] = params
        for key in ("solved_threshold", "method_defaults", "method_label"):   # as an older version wrote
            r.pop(key)
        (out / "runs" / f"{r['hash']}.json").write_text(json.dumps(r))
    assert cli.main(["--collect", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "lack 'solved_threshold'" in err and "lack 'method_defaults'" in err
    assert report.main([str(out)]) == 0
    assert not marker.exists()
    assert "planted" in (out / "summary.md").read_text()


# --- 2. checkpoints are data ---------------------------------------------------------------------
class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):           # what an unpickler would call: open(marker, "w")
        return (open, (self.marker, "w"))


def test_2_a_planted_checkpoint_is_discarded_unexecuted_and_the_run_starts_over(tmp_path, capsys):
    out, marker = tmp_path / "out", tmp_path / "EXECUTED"
    args = ["--methods", NOISY, *TINY, "--seeds", "1", "--checkpoint-every", "1", "--out", str(out)]
    (cfg,) = cli.build_configs(cli.parse_args(args))
    planted = checkpoint.path(out, cfg.key())
    planted.parent.mkdir(parents=True)
    torch.save({"step": 2, "payload": Planted(marker)}, planted)
    assert cli.main(args) == 0
    assert not marker.exists()
    assert f"discarded checkpoint {planted}" in capsys.readouterr().err
    (record,) = records(out).values()
    assert record["status"] == "ok" and "resumed_from_step" not in record and not planted.exists()


def test_2_a_damaged_checkpoint_is_discarded(tmp_path, capsys):
    file = tmp_path / "x.pt"
    file.write_bytes(b"PK\x03\x04 not a zip")
    assert checkpoint.load(file) is None and not file.exists()
    assert "discarded checkpoint" in capsys.readouterr().err


def test_2_real_checkpoints_load_weights_only(tmp_path):
    """Everything runner.train saves, with an online method's state and Adam's, round-trips through
    torch.load(weights_only=True); a value that would not is refused when saved, by name."""
    from harness.method import RunSpec, Updater
    from harness.registry import METHODS, TASKS
    task = TASKS.get("adding")(4)
    method = METHODS.get("uoro")()
    spec = RunSpec("lstm", task.input_size, 3, task.output_size, task.num_steps, 2)
    net = method.build_network(spec)
    optimizer = torch.optim.Adam(net.parameters())
    rng = torch.Generator().manual_seed(0)
    method.train_step(net, next(task.stream(0, "train", 2)), Updater(net, optimizer, 1.0), rng)
    state = {"step": 1, "net": net.state_dict(), "optimizer": optimizer.state_dict(), "method": method.state_dict(),
             "rng": rng.get_state(), "torch_rng": torch.get_rng_state(), "updates": 1, "wall": 0.5,
             "record": {"curve": [{"score": float("nan"), "train_loss": None}], "fidelity": [], "status": "running"},
             "memory": {"saved_bytes": 3}, "losses": [0.25], "times": [0.1], "timer_updates": [1]}
    checkpoint.save(tmp_path / "c.pt", state)
    loaded = checkpoint.load(tmp_path / "c.pt")
    assert loaded is not None and loaded["step"] == 1
    assert all(torch.equal(loaded["net"][k], v) for k, v in state["net"].items())
    assert torch.equal(loaded["rng"], state["rng"])
    import numpy as np
    with pytest.raises(TypeError, match=r"state\['method'\]\['x'\] is a numpy.ndarray"):
        checkpoint.save(tmp_path / "d.pt", {**state, "method": {"x": np.zeros(2)}})


# --- 3. damaged records --------------------------------------------------------------------------
DAMAGE = {
    "list": (b"[1, 2]", "expected a JSON object at the top level, found a list"),
    "string": (b'"ok"', "found str 'ok'"),
    "not utf-8": (b'{"status": "ok", "x": "\xff\xfe"}', "not UTF-8 text (byte 0xff"),
    "status only": (b'{"status": "ok"}', "hash: missing"),
    "wrong types": (None, "config.seed: expected an integer, found str '0'"),
    "bad curve": (None, "curve[0].score: expected a number, found null"),
    "truncated": (None, "not valid JSON"),
    "empty": (b"", "empty file"),
    "other hash": (None, "is not its file name"),
}


def damaged(kind, record):
    content, message = DAMAGE[kind]
    if content is not None:
        return content, message
    r = json.loads(json.dumps(record))
    if kind == "wrong types":
        r["config"]["seed"] = "0"
    elif kind == "bad curve":
        r["curve"][0]["score"] = None
    elif kind == "other hash":
        r["hash"] = "0" * 20
    text = json.dumps(r).encode()
    return (text[: len(text) // 2] if kind == "truncated" else text), message


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_3_a_damaged_record_is_skipped_with_a_warning_and_not_finished(finished, tmp_path, capsys, kind):
    out = copy_of(finished, tmp_path)
    key, record = next(iter(finished[1].items()))
    path = out / "runs" / f"{key}.json"
    content, message = damaged(kind, record)
    path.write_bytes(content)
    found = []
    assert store.load(out, key, found) is None and not store.is_finished(out, key)
    assert len(store.load_all(out, found)) == 1
    assert len(found) == 2 and message in found[0][1]
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and str(path) in warning and message in warning   # once, naming the file


def test_3_damaged_records_are_counted_in_the_tables_and_their_runs_redone(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    key, record = next(iter(finished[1].items()))
    (out / "runs" / f"{key}.json").write_text('{"status": "ok"}')          # counted as finished before
    (out / "runs" / "zzz.json").write_text('{"hello": 1}')                  # a stray file
    (out / "runs" / "cut.json").write_text(json.dumps(record)[:100])        # truncated, under another name
    assert cli.main(["--collect", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert all(name in err for name in (f"{key}.json", "zzz.json", "cut.json")) and "Traceback" not in err
    assert "3 damaged records skipped" in (out / "summary.md").read_text()
    assert "3 damaged records skipped" in (out / "report.md").read_text()
    assert report.main([str(out)]) == 0
    other = next(k for k in finished[1] if k != key)
    before = (out / "runs" / f"{other}.json").stat().st_mtime_ns
    args = ["--methods", "tbptt[k=2]", *TINY, "--seeds", "2", "--out", str(out)]
    assert cli.main([*args, "--dry-run"]) == 0
    assert "to run (1):" in capsys.readouterr().out
    assert cli.main(args) == 0                                             # the damaged run is redone
    assert store.load(out, key)["status"] == "ok"
    assert (out / "runs" / f"{other}.json").stat().st_mtime_ns == before   # the valid one is not


def test_3_an_invalid_record_is_never_written(tmp_path):
    with pytest.raises(schema.InvalidRecord, match="config: missing"):
        store.save(tmp_path, {"hash": "abc", "status": "failed"})
    with pytest.raises(schema.InvalidRecord, match="not a plain file name"):
        store.save(tmp_path, {**json.loads(json.dumps(FAILED)), "hash": "../elsewhere"})
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


FAILED = {"hash": "abc", "status": "failed", "error": "x",
          "config": {"method": "m", "task": "t", "method_params": {}, "task_params": {}, "seq_len": 1, "cell": "rnn",
                     "hidden": 1, "batch": 1, "seed": 0}}


def test_3_the_schema_describes_every_run_config_field():
    """A RunConfig field the schema does not know would go unchecked: add it to schema.Config."""
    hints = typing.get_type_hints(schema.Config)
    run_hints = typing.get_type_hints(runner.RunConfig)

    def kinds(tp):   # int | None -> {int}; dict[str, Any] -> {dict}
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        return {typing.get_origin(a) or a for a in (typing.get_args(tp) if union else [tp]) if a is not type(None)}

    for f in dataclasses.fields(runner.RunConfig):
        assert f.name in hints, f"schema.Config lacks RunConfig.{f.name}"
        assert kinds(run_hints[f.name]) == kinds(hints[f.name]), f.name
    schema.check(json.loads(json.dumps({**FAILED, "config": runner.RunConfig("m", "t").as_dict()})))


# --- 4, 5. exit codes; method code is contained --------------------------------------------------
@pytest.mark.parametrize("modes,code", [("ok", 0), ("diverge", 0), ("raise", 1)])
def test_4_exit_code_says_whether_a_run_failed(tmp_path, modes, code):
    assert cli.main(["--methods", f"{NOISY}[mode={modes}]", *TINY, "--seeds", "1", "--out", str(tmp_path)]) == code
    assert cli.main(["--collect", "--out", str(tmp_path), "--quiet"]) == code


def test_4_collect_exit_code_follows_the_newest_record_of_each_run(finished, tmp_path):
    """A failure from older code that a later run replaced is stale, as in the tables: it does not fail --collect."""
    out = copy_of(finished, tmp_path)
    key, record = next(iter(finished[1].items()))
    old = {**FAILED, "hash": "older" + key, "config": record["config"], "finished": "2000-01-01T00:00:00"}
    (out / "runs" / f"{old['hash']}.json").write_text(json.dumps(old))
    assert cli.main(["--collect", "--out", str(out), "--quiet"]) == 0
    assert "1 older records" in (out / "summary.md").read_text()
    (out / "runs" / f"{old['hash']}.json").write_text(json.dumps({**old, "finished": "2999-01-01T00:00:00"}))
    assert cli.main(["--collect", "--out", str(out), "--quiet"]) == 1


def test_3_a_record_without_its_optional_fields_is_tabled_and_plotted(finished, tmp_path):
    """The schema lets `steps` and `chance` be missing (older versions): tables and figures do without them."""
    out = copy_of(finished, tmp_path)
    for key, r in finished[1].items():
        r = json.loads(json.dumps(r))
        r["config"].pop("steps"), r.pop("chance")
        schema.check(r)
        (out / "runs" / f"{key}.json").write_text(json.dumps(r))
    assert cli.main(["--collect", "--out", str(out), "--quiet"]) == 0
    assert report.main([str(out)]) == 0
    assert (out / "figures" / "learning_updates.png").exists()

def test_5_systemexit_and_keyboardinterrupt_from_method_code_are_failed_runs(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["--methods", f"{NOISY}[mode=[exit,interrupt]],tbptt[k=2]", *TINY, "--seeds", "1",
                     "--out", str(out)]) == 1
    by_method = {(r["method_label"] if "mode" not in r["config"]["method_params"]
                  else r["config"]["method_params"]["mode"]): r for r in records(out).values()}
    assert by_method["exit"]["status"] == "failed" and by_method["exit"]["error"].startswith("SystemExit")
    assert by_method["interrupt"]["status"] == "failed"
    assert "KeyboardInterrupt: raised by the method" in by_method["interrupt"]["error"]
    assert by_method["tbptt[k=2]"]["status"] == "ok"                     # the sweep went on
    assert "interrupted" not in capsys.readouterr().err


EXITS_ON_CHECK = """
from harness.method import Method


class ExitsOnCheck(Method):
    name = "exits_on_check"

    def validate(self):
        raise SystemExit(0)
"""


@pytest.mark.parametrize("raised", ["SystemExit(0)", "ValueError('k must be odd')"])
def test_5_an_exception_from_method_code_while_the_run_list_is_checked_is_bad_input(tmp_path, capsys, raised):
    kind = raised.split("(")[0].lower()     # a method name per case: the registry keeps what it loaded
    source = EXITS_ON_CHECK.replace("SystemExit(0)", raised).replace("exits_on_check", f"raises_{kind}_on_check")
    (tmp_path / f"raises_{kind}.py").write_text(source)
    assert cli.main(["--methods", str(tmp_path / f"raises_{kind}.py"), *TINY, "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys, f"the code of a method or task raised {raised.split('(')[0]}")
    assert not (tmp_path / "out" / "runs").exists() or not list((tmp_path / "out" / "runs").iterdir())


# --- 6, 11. the output folder ---------------------------------------------------------------------
def test_6_every_output_folder_is_probed_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "figures").write_text("a file where the figures folder goes")
    assert cli.main(["--methods", "bptt", *TINY, "--seeds", "1", "--out", str(out)]) == 2
    one_line_error(capsys, f"'{out / 'figures'}' is not writable")
    assert not list((out / "runs").glob("*.json"))


def test_6_an_output_folder_that_refuses_files_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """OUT itself not writable while OUT/runs is (what a read-only OUT does for anyone but root)."""
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == out:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert cli.main(["--methods", "bptt", *TINY, "--seeds", "1", "--out", str(out)]) == 2
    one_line_error(capsys, f"output folder '{out}' is not writable: Permission denied")
    assert not list((out / "runs").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_6_a_read_only_output_folder_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    out.chmod(0o555)
    try:
        assert cli.main(["--methods", "bptt", *TINY, "--seeds", "1", "--out", str(out)]) == 2
        one_line_error(capsys, "is not writable")
    finally:
        out.chmod(0o755)


def test_6_a_write_error_at_the_end_is_one_line_exit_1_and_records_are_kept(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real = tempfile.mkstemp

    def disk_full(*args, dir=None, prefix=None, **kwargs):   # the disk fills up while the runs train
        if dir is not None and Path(dir).name == "figures" and prefix.endswith(".png."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, dir=dir, prefix=prefix, **kwargs)

    monkeypatch.setattr(store.tempfile, "mkstemp", disk_full)
    assert cli.main(["--methods", "bptt", *TINY, "--seeds", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and str(out / "figures") in err, err
    (record,) = records(out).values()
    assert record["status"] == "ok"
    assert report.main([str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err


@pytest.mark.parametrize("mask", [0o002, 0o077])
def test_11_files_honour_the_umask(tmp_path, mask):
    out = tmp_path / "out"
    old = os.umask(mask)
    try:
        assert cli.main(["--methods", "bptt", *TINY, "--seeds", "1", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.relative_to(out).parts[0] for p in files} >= {"runs", "figures", "summary.md", "report.md",
                                                             "per_seed.csv", "locks"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o666 & ~mask for p in files}


# --- 7, 8, 9. sweep files and options ------------------------------------------------------------
@pytest.mark.parametrize("name,content,message", [
    ("s.yaml", b"methods: bptt\nseeds: 1\nhidden: \xff\n", "s.yaml line 3: not UTF-8 text (byte 0xff)"),
    ("s.toml", b"methods = 'bptt'\n# \xe9\n", "s.toml line 2: not UTF-8 text"),
    ("s.yaml", b"methods: bptt\nlr: -1\n", "s.yaml line 2: lr: '-1' must be positive"),
    ("s.yaml", b"methods: bptt\nlr: .inf\n", "s.yaml line 2: lr: 'inf' is not a finite number"),
    ("s.yaml", b"methods: bptt\ntasks: adding\nmethods: tbptt\n", "s.yaml line 3: cannot read YAML: key 'methods' "
                                                                  "given twice (first on line 1)"),
    ("s.yaml", b"methods:\n  tbptt: {k: 2, k: 3}\n", "s.yaml line 2: cannot read YAML: key 'k' given twice"),
    ("s.yaml", b"methods:\n  tbptt: {k: 5_0}\n", "s.yaml line 1: methods: method tbptt: k='5_0' is not"),
    ("s.yaml", b"methods: bptt\nseeds: 1:30\n", "s.yaml line 2: seeds: '1:30' is not an integer"),
    ("s.yaml", b"methods:\n  tbptt: {k: 0}\n", "s.yaml line 1: methods: method tbptt: k=0 is not a positive"),
    ("s.yaml", b"methods: ':X'\n", "s.yaml line 1: methods: cannot read method ':X'"),
    ("s.yaml", b"methods: bptt\nseeds: 99999999999999999999\n", "s.yaml line 2: seeds: '99999999999999999999' "
                                                                 "is more than 10000"),
    ("s.yaml", b"methods: bptt\nseq_len: 2024-13-45\n", "s.yaml line 2: cannot read YAML: cannot read '2024-13-45'"),
    ("s.toml", b"methods = 'bptt'\nmethods = 'tbptt'\n", "s.toml: cannot read TOML: Cannot overwrite a value "
                                                         "(at line 2"),
])
def test_7_sweep_file_problems_name_the_file_line_and_key(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    start = time.time()
    assert cli.main(["--config", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    one_line_error(capsys, message)
    assert time.time() - start < 60                                        # a huge number does not hang


def test_7_a_directory_as_sweep_file(tmp_path, capsys):
    assert cli.main(["--config", str(tmp_path), "--dry-run"]) == 2
    one_line_error(capsys, "is a directory")


@pytest.mark.parametrize("args,message", [
    (["--methods", ":X"], "cannot read method ':X': expected file.py or package.module:ClassName"),
    (["--methods", "os:path"], "'os:path' is not a Method subclass"),
    (["--methods", "bptt", "--tasks", "a:"], "cannot read task 'a:'"),
    (["--methods", "bptt", "--seeds", "100000000"], "--seeds: '100000000' is more than 10000"),
    (["--methods", "tbptt[k=[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]]", "--seq-len",
      ",".join(map(str, range(1, 501))), "--seeds", "20"], "the run list makes 200000 runs, more than the 100000"),
    (["--methods", "bptt", "--hidden", "1000000"], "needs at least"),
    (["--methods", "bptt", "--batch", "100000000"], "needs at least"),
    (["--methods", "bptt", "--tasks", "adding", "--seq-len", "1000000000000"], "needs at least"),
    (["--methods", "bptt", "--seq-len", ","], "--seq-len: ',': expected positive integers separated by commas"),
    (["--methods", "bptt", "--seq-len", "3,,4"], "expected positive integers"),
    (["--methods", "bptt", "--lr", "inf"], "--lr: 'inf' is not a finite number"),
    (["--methods", "bptt", "--lr", "nan"], "--lr: 'nan' is not a finite number"),
    (["--methods", "bptt", "--clip", "inf"], "--clip: 'inf' is not a finite number"),
    (["--methods", "bptt", "--tune", "lr=[inf]"], "lr='inf' is not a positive number"),
    (["--methods", "tbptt[k=5_0]"], "k='5_0' is not a positive integer"),
    (["--methods", "bptt", "--hidden", "5_0"], "'5_0' is not an integer"),
    (["--methods", "bptt", "--tasks", "mimic[tau=inf]"], "tau=inf is not a number >= 1 (not finite)"),
    (["--methods", "bptt", "--cell", "leaky", "--tau", "1_0"], "--tau: '1_0' is not a finite number"),
    (["--methods", "bptt", "--cell", "leaky", "--tau", "inf"], "--tau: 'inf' is not a finite number"),
    (["--methods", "bp\ntt"], "unknown method 'bp\\ntt'"),
])
def test_8_9_options_and_limits_are_one_line_errors_before_anything_runs(tmp_path, capsys, args, message):
    start = time.time()
    assert cli.main([*args, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "out").exists()
    assert time.time() - start < 60


def test_8_the_memory_check_is_a_judgement_that_force_overrides(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(limits, "available_bytes", lambda device: 1000)
    args = ["--methods", "bptt", *TINY, "--seeds", "1", "--out", str(tmp_path)]
    assert cli.main(args) == 2
    one_line_error(capsys, "needs at least", "more than the 1000 B available on cpu", "--force")
    assert cli.main([*args, "--force"]) == 0


def test_8_the_memory_budget_depends_on_where_runs_execute():
    slurm = types.SimpleNamespace(name="slurm", params={"mem_gb": 4}, concurrent=0)
    assert limits.budget(slurm) == (4 * 2**30, "per SLURM job (mem_gb)")
    assert limits.budget(types.SimpleNamespace(name="slurm", params={}, concurrent=0)) is None   # the login node's
    assert limits.budget(types.SimpleNamespace(name="joblib", params={}, concurrent=4))[1] == \
        "per run with 4 runs at once"
    cfg = runner.RunConfig("bptt", "adding", seq_len=3, hidden=3, batch=2, eval_batches=1)
    limits.check_memory([cfg], available=10_000)
    with pytest.raises(ConfigError, match="more than the 1000 B available per SLURM job"):
        limits.check_memory([cfg], available=1000, where="per SLURM job")


def test_8_the_estimate_is_below_what_bptt_saves():
    """The memory check may only refuse what cannot fit: its activation term must not exceed the
    bytes BPTT really saves for backward (measured here, every cell)."""
    from harness.meters import SavedBytesMeter
    from harness.method import RunSpec, Updater
    from harness.registry import METHODS
    for cell in ("rnn", "gru", "lstm"):
        cfg = runner.RunConfig("bptt", "adding", seq_len=12, cell=cell, hidden=8, batch=3)
        task = cfg.build_task()
        method = METHODS.get("bptt")()
        net = method.build_network(cfg.spec(task))
        batch = next(task.stream(0, "train", cfg.batch))
        meter = SavedBytesMeter(list(net.parameters()) + batch.tensors())
        with meter.measure():
            method.train_step(net, batch, Updater(net, torch.optim.Adam(net.parameters()), 1.0), None)
        per_value = meter.peak / (task.num_steps * cfg.batch * cfg.hidden * 4)
        assert limits.SAVED_PER_STEP[cell] <= per_value < limits.SAVED_PER_STEP[cell] + 1, cell


# --- 10. one writer per run ------------------------------------------------------------------------
@pytest.mark.slow
def test_10_two_identical_commands_on_one_output_folder_run_each_run_once(tmp_path):
    out, log = tmp_path / "out", tmp_path / "trained.log"
    args = [sys.executable, "run_all.py", "--methods", f"{NOISY}[sleep=[0.2,0.21]]", *TINY, "--seeds", "2",
            "--out", str(out)]
    env = {**os.environ, "SWEEP_TEST_SLEEP": "1", "SWEEP_TEST_LOG": str(log)}
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    trained = log.read_text().splitlines()
    assert len(trained) == 4, trained                        # 4 runs, each trained once between the two
    recs = records(out)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs.values())


HOLD = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_10_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    args = ["--methods", "bptt", *TINY, "--seeds", "1", "--out", str(out)]
    (cfg,) = cli.build_configs(cli.parse_args(args))
    lock = locks.path(out, cfg.key())
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with locks.run_lock(out, cfg.key(), wait=False) as got:
            assert got is None                                # held by a live process
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with locks.run_lock(out, cfg.key(), wait=False) as got:
        assert got is False                                   # its process is gone: free at once
    assert cli.main(args) == 0 and records(out)

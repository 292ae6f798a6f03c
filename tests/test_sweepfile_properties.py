"""Property-based tests (hypothesis) of everything that reads what a user types: the
`name[key=value,...]` parser, the declared hyperparameters, the command line and the sweep-file
loader. Any input either gives a valid run list or a one-line ConfigError (exit code 2), never
another exception."""
import contextlib
import io
import math
import os
import string

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness import cli
from harness.config import ConfigError, Param, parse_spec_list
from harness.registry import METHODS, TASKS, Registry

SETTINGS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None,
                    derandomize=not os.environ.get("HYPOTHESIS_EXAMPLES"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def no_module_imports():
    """`module:Class` imports whatever module the text names: random text must not import the
    standard library's modules with side effects (the registry's checks of such names are
    tested by example in test_hardening.py)."""
    METHODS.names(), TASKS.names()
    original = Registry._load_external

    def load(self, ref):
        if ":" in ref:
            raise ConfigError(f"{ref!r}: not imported in this test")
        return original(self, ref)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Registry, "_load_external", load)
        yield


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


# --- the spec parser and declared hyperparameters -----------------------------------------------
SPEC_CHARS = string.ascii_lowercase[:6] + "_=[],. -+:0123456789\n\t\u2028é"
junk_names = st.sampled_from(["x", "", "k", "bpt", "x.py"]) | st.text(SPEC_CHARS, max_size=6)
values = (st.integers(-10**30, 10**30).map(str) | st.sampled_from(["5_0", "1e-3", "inf", "nan", "-0", "", "true",
                                                                    "sequence", "[1,2]", "[]", "[1,,2]", "[[1]]",
                                                                    "٣", " 7 "])
          | st.text(SPEC_CHARS, max_size=8))
keys = st.sampled_from(sorted({k for reg in (METHODS, TASKS) for n in reg.names()
                               for k in reg.get(n).hyperparameters}) + ["", "q"]) | st.text(SPEC_CHARS, max_size=5)


def plausible(p: Param):
    """Mostly values a user would type for `p`, sometimes junk."""
    if p.choices is not None:
        good = st.sampled_from([str(c) for c in p.choices])
    elif p.type is int:
        good = st.integers(1, 6).map(str)
    elif p.type is float:
        good = st.sampled_from(["0.5", "1", "2.0", "10", "1e-3"])
    elif p.type is bool:
        good = st.sampled_from(["true", "false"])
    else:
        good = st.just(str(p.default))
    return st.one_of(*[good] * 7, values)


@st.composite
def spec_lists(draw, registry=None, damage=True):
    """Lists of name[key=value,...] items: mostly names and options the registry declares, with
    grids, junk values, junk names, and random damage to the text."""
    items = []
    for _ in range(draw(st.integers(1, 2))):
        reg = registry or draw(st.sampled_from([METHODS, TASKS]))
        name = draw(st.sampled_from(reg.names())) if draw(st.integers(0, 14)) else draw(junk_names)
        declared = reg.get(name).hyperparameters if name in reg.names() else {}
        params = {}
        for _ in range(draw(st.integers(0, 2 if declared else 1))):
            if declared and draw(st.integers(0, 7)):
                key = draw(st.sampled_from(sorted(declared)))
                value = draw(plausible(declared[key]))
                if not draw(st.integers(0, 3)):
                    value = "[" + ",".join(draw(st.lists(plausible(declared[key]), min_size=1, max_size=3))) + "]"
            else:
                key, value = draw(keys), draw(values)
            params[key] = value
            if not declared and draw(st.integers(0, 3)):
                params.pop(key)
        items.append(name + (f"[{','.join(f'{k}={v}' for k, v in params.items())}]" if params else ""))
    text = ",".join(items)
    if damage and not draw(st.integers(0, 7)):          # cut or splice anywhere
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.text(SPEC_CHARS, max_size=3)) + text[i + draw(st.integers(0, 3)):]
    return text


@SETTINGS
@given(st.one_of(spec_lists(), st.text(max_size=30)))
def test_the_spec_parser_returns_specs_or_a_one_line_config_error(text):
    try:
        specs = parse_spec_list(text)
    except ConfigError as exc:
        event("refused")
        assert one_line(str(exc)) and str(exc)
        return
    event("parsed")
    assert specs and all(s.name and isinstance(s.params, dict) for s in specs)
    assert all(isinstance(k, str) and isinstance(v, str) for s in specs for k, v in s.params.items())


PARAMS = [(f"{reg.kind} {n}", k, p) for reg in (METHODS, TASKS) for n in reg.names()
          for k, p in reg.get(n).hyperparameters.items()]


@SETTINGS
@given(st.sampled_from(PARAMS), values | st.text(max_size=12))
def test_every_declared_hyperparameter_parses_any_text_or_refuses_it_on_one_line(param, text):
    owner, key, p = param
    try:
        value = p.parse(owner, key, text)
    except ConfigError as exc:
        event("refused")
        assert one_line(str(exc)) and key in str(exc)
        return
    event("parsed")
    assert value is None or isinstance(value, p.type)
    if p.type is float and value is not None:
        assert math.isfinite(value)
    if p.choices is not None and value is not None:
        assert value in p.choices


# --- the command line and sweep files, end to end ------------------------------------------------
def run(argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


def valid_or_one_line_error(argv):
    code, err = run(argv)
    event(f"exit {code}" + (f": {err.split(':')[2][:30]}" if code == 2 and err.count(":") > 1 else ""))
    assert code in (0, 2), (code, err)
    if code == 2:
        assert one_line(err) and "error" in err and "Traceback" not in err, err


def mostly(good: list, bad: list):
    return st.sampled_from(good) | st.sampled_from(good) | st.sampled_from(good) | st.sampled_from(bad)


OPTIONS = {"--seq-len": mostly(["3", "4,5"], ["2,", ",", "0", "5_0", "99999999999"]),
           "--hidden": mostly(["3", "4"], ["0", "1000000", "x"]),
           "--batch": mostly(["2", "3"], ["-1", "1_0"]),
           "--lr": mostly(["1e-3", "0.1"], ["inf", "nan", "-1", "0"]),
           "--clip": mostly(["0", "1.5"], ["inf", "-0.5"]),
           "--seeds": mostly(["1", "2"], ["0", "100000000", "99999999999999999999"]),
           "--tune": mostly(["lr=[1e-3,1e-2]", "clip=[0,1]", "batch=[2,3]"], ["lr=[inf]", "lr=[]", "x=[1]"]),
           "--eval-seq-len": mostly(["4", "8"], ["0"]),
           "--cell": mostly(["rnn", "gru", "lstm"], ["lstn"])}


@SETTINGS
@given(spec_lists(METHODS), st.one_of(st.just("adding"), spec_lists(TASKS)),
       st.just({}) | st.dictionaries(st.sampled_from(sorted(OPTIONS)), values, max_size=1),
       st.fixed_dictionaries({}, optional={k: v for k, v in OPTIONS.items()}))
def test_any_command_line_gives_a_run_list_or_a_one_line_error(tmp_path_factory, methods, tasks, junk, options):
    out = tmp_path_factory.mktemp("cmd")
    extra = [f"{flag}={value}" for flag, value in {**options, **junk}.items()]
    valid_or_one_line_error([f"--methods={methods}", f"--tasks={tasks}", *extra, "--dry-run", "--out", str(out)])


OPTION_KEYS = sorted({a.dest for a in cli.make_parser()._actions if a.option_strings} - {"help"})
scalars = (st.none() | st.booleans() | st.integers(-10**25, 10**25) | st.floats(allow_nan=True)
           | st.sampled_from(["bptt", "tbptt[k=[2,3]]", "adding", "copy,adding", "3", "1e-3", "inf", "5_0", "lstm",
                              "joblib", "slurm", "cuda", "lr=[1e-3,1e-2]", "mem_gb=4", ":X", "x.py"])
           | st.text(SPEC_CHARS, max_size=8))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["tbptt", "bptt", "k", "lr", "mem_gb", "x"]) | st.text(SPEC_CHARS, max_size=4), inner,
    max_size=3), max_leaves=6)
small = st.integers(1, 4)
option_mapping = st.dictionaries(st.sampled_from(METHODS.names()), st.dictionaries(
    st.sampled_from(["k", "k_top", "update", "update_every", "x"]), st.integers(1, 4) | st.lists(small, max_size=3)
    | st.sampled_from(["sequence", "paper"]), max_size=2), min_size=1, max_size=2)
PLAUSIBLE = {"tasks": st.just("adding") | spec_lists(TASKS) | st.lists(spec_lists(TASKS), max_size=2),
             "seq_len": small | st.lists(small, max_size=3), "hidden": small, "batch": small, "steps": small,
             "eval_batches": small, "lr": mostly([1e-3, 0.1, "1e-2"], [-1, 0, float("inf")]),
             "clip": mostly([0, 1.5], [-1]), "cell": mostly(["rnn", "lstm", "gru"], ["lstn"]),
             "optimizer": mostly(["adam", "sgd", "rmsprop"], ["adamw"]), "seeds": mostly([1, 2], [10**20, 0]),
             "tune": mostly([{"lr": [1e-3, 1e-2]}, {"clip": [0, 1]}, "lr=[1e-3,3e-3]"], [{"lr": []}, {"x": 1}]),
             "executor": mostly(["local", "joblib"], ["slurm"]), "quiet": st.booleans(),
             "slurm_param": st.just({"mem_gb": 4})}
documents = st.tuples(
    st.fixed_dictionaries({"methods": spec_lists(METHODS) | st.lists(spec_lists(METHODS), min_size=1, max_size=2)
                           | option_mapping}, optional=PLAUSIBLE),
    st.just({}) | st.dictionaries(st.sampled_from(OPTION_KEYS + [k.replace("_", "-") for k in OPTION_KEYS]
                                                  + ["config", "nope"]), junk, max_size=2),
).map(lambda parts: {**parts[0], **parts[1]})


@SETTINGS
@given(documents, st.sampled_from(["yaml", "toml-ish"]))
def test_any_sweep_file_gives_a_run_list_or_a_one_line_error(tmp_path_factory, doc, kind):
    folder = tmp_path_factory.mktemp("file")
    if kind == "yaml":
        path = folder / "s.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    else:   # TOML has no writer in the standard library: a rough one (its own errors are part of the test)
        path = folder / "s.toml"
        path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in doc.items()))
    # --seeds 1 on the command line keeps the run list small; the file's own value is still checked
    valid_or_one_line_error(["--config", str(path), "--seeds", "1", "--dry-run", "--out", str(folder / "out")])


def _toml(v) -> str:
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {_toml(x)}' for k, x in v.items()) + "}"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@SETTINGS
@given(st.binary(max_size=80) | st.text(string.printable + "é\u2028", max_size=80).map(str.encode),
       st.sampled_from(["s.yaml", "s.toml"]))
def test_any_bytes_as_a_sweep_file_give_a_run_list_or_a_one_line_error(tmp_path_factory, content, name):
    folder = tmp_path_factory.mktemp("bytes")
    (folder / name).write_bytes(content)
    valid_or_one_line_error(["--config", str(folder / name), "--methods", "bptt", "--seeds", "1", "--dry-run",
                             "--out", str(folder / "out")])

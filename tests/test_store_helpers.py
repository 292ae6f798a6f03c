"""A method's code hash covers its module, the modules it imports from beside it (methods/_*.py)
and the computing harness modules it imports (harness/online.py), so editing any of them reruns its
runs, and editing a helper it does not use does not."""
import sys

from harness import store
from harness.registry import METHODS


def test_source_hash_covers_the_helpers_a_method_imports_and_only_those(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_helper.py").write_text("X = 1\n")
    (pkg / "_other.py").write_text("Y = 1\n")
    (pkg / "_deeper.py").write_text("Z = 1\n")
    (pkg / "_middle.py").write_text("from ._deeper import Z\n")
    (pkg / "mine.py").write_text("from mypkg._helper import X\nfrom . import _middle\nclass Mine:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mypkg.mine
    try:
        before = store.source_hash(mypkg.mine.Mine)
        (pkg / "_other.py").write_text("Y = 2\n")                  # beside it, not imported: not its code
        assert store.source_hash(mypkg.mine.Mine) == before
        (pkg / "_helper.py").write_text("X = 2\n")                 # imported by name
        after_helper = store.source_hash(mypkg.mine.Mine)
        assert after_helper != before
        (pkg / "_deeper.py").write_text("Z = 2\n")                 # imported by what it imports (relative)
        assert store.source_hash(mypkg.mine.Mine) != after_helper
    finally:
        for name in ("mypkg", "mypkg.mine", "mypkg._helper", "mypkg._other", "mypkg._middle", "mypkg._deeper"):
            sys.modules.pop(name, None)


def code_files(name):
    import inspect
    from pathlib import Path
    found = []
    for base in METHODS.get(name).__mro__:
        if base.__module__.split(".")[0] not in ("harness", "builtins"):
            store._code_files(Path(inspect.getfile(base)).resolve(), base.__module__, found)
    return {f"{p.parent.name}/{p.name}" for p in found}


def test_the_registered_methods_hash_what_they_use():
    assert code_files("bptt") == {"methods/bptt.py"}                     # SAB's network is not bptt's code
    assert code_files("sab") == {"methods/sab.py", "methods/_sab_network.py", "methods/_sab_native.py",
                                 "methods/_sab_native.cpp", "methods/__init__.py"}   # (from . import _sab_native)
    assert {"harness/online.py", "harness/jacobians.py"} <= code_files("rtrl")
    assert {"methods/eprop.py", "methods/_unitwise.py", "harness/online.py"} <= code_files("rflo")

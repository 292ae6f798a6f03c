"""A method's code hash covers its module, the modules it imports from beside it (methods/_*.py)
and the computing harness modules it imports (harness/online.py), so editing any of them reruns its
runs, and editing a helper it does not use does not."""
import sys

import pytest

from harness import store
from harness.registry import METHODS


@pytest.fixture
def package(tmp_path, monkeypatch):
    """package(name, {file: text}) -> the package folder, importable; its modules unloaded after."""
    made = []

    def make(name, files):
        folder = tmp_path / name
        folder.mkdir()
        for file, text in {"__init__.py": "", **files}.items():
            (folder / file).write_text(text)
        made.append(name)
        return folder

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for name in [m for m in sys.modules if m.split(".")[0] in made]:
        sys.modules.pop(name, None)


def test_source_hash_covers_the_helpers_a_method_imports_and_only_those(package):
    pkg = package("mypkg", {"_helper.py": "X = 1\n", "_other.py": "Y = 1\n", "_deeper.py": "Z = 1\n",
                            "_middle.py": "from ._deeper import Z\n",
                            "mine.py": "from mypkg._helper import X\nfrom . import _middle\nclass Mine:\n    pass\n"})
    import mypkg.mine
    before = store.source_hash(mypkg.mine.Mine)
    (pkg / "_other.py").write_text("Y = 2\n")                  # beside it, not imported: not its code
    assert store.source_hash(mypkg.mine.Mine) == before
    (pkg / "_helper.py").write_text("X = 2\n")                 # imported by name
    after_helper = store.source_hash(mypkg.mine.Mine)
    assert after_helper != before
    (pkg / "_deeper.py").write_text("Z = 2\n")                 # imported by what it imports (relative)
    assert store.source_hash(mypkg.mine.Mine) != after_helper


def test_compiled_companions_are_hashed_with_the_module_beside_them(package):
    """A module's same-stem .c/.cc/.cpp/.h/.hpp files count as its code (methods/_sab_native.cpp,
    which methods/_sab_native.py compiles at run time); other files beside it do not."""
    pkg = package("cpkg", {"_fast.py": "SOURCE = 'loaded at run time'\n", "_fast.cpp": "int f() { return 1; }\n",
                           "_fast.h": "int f();\n", "_other.cpp": "int g() { return 1; }\n",
                           "mine.py": "from . import _fast\nclass Mine:\n    pass\n"})
    import cpkg.mine
    before = store.source_hash(cpkg.mine.Mine)
    (pkg / "_other.cpp").write_text("int g() { return 2; }\n")   # no module of that stem: not its code
    assert store.source_hash(cpkg.mine.Mine) == before
    for name in ("_fast.cpp", "_fast.h"):
        (pkg / name).write_text((pkg / name).read_text() + "// edited\n")
        after = store.source_hash(cpkg.mine.Mine)
        assert after != before, name
        before = after


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

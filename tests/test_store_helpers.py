"""Editing a method's helper module (methods/_*.py) changes the code hash, so its runs are redone."""
import sys

from harness import store


def test_source_hash_covers_helper_modules(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_helper.py").write_text("X = 1\n")
    (pkg / "mine.py").write_text("from mypkg._helper import X\nclass Mine:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mypkg.mine
    before = store.source_hash(mypkg.mine.Mine)
    (pkg / "_helper.py").write_text("X = 2\n")
    assert store.source_hash(mypkg.mine.Mine) != before
    for name in ("mypkg", "mypkg.mine", "mypkg._helper"):
        sys.modules.pop(name, None)

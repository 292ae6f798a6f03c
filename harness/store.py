"""One JSON record per run, named by a hash of its configuration and of the source code that
defines what it measures, written atomically (temporary file, then rename).

Records are data: reading one never imports the code it names. Every record is checked against
one schema (harness/schema.py) when it is written and when it is read; a damaged record (not
JSON, not UTF-8, empty, truncated, or not a valid record of this version) is skipped with one
warning line naming the file and what is wrong, and counts as not finished, so its run is redone
and the file replaced.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

from .schema import InvalidRecord, check

HARNESS = Path(__file__).resolve().parent
# Code whose change changes every result; editing tables, plots or the command line does not rerun.
MEASURING = ["models.py", "method.py", "task.py", "meters.py", "fidelity.py", "runner.py", "credit.py",
             "trajectory.py"]
# harness modules that compute for the methods that import them (the online methods' base and
# Jacobians): part of those methods' hash only
COMPUTING = {"online.py", "jacobians.py"}
# compiled sources a module loads at run time rather than imports (methods/_sab_native.py builds
# methods/_sab_native.cpp): hashed with the module of the same stem beside them
COMPANIONS = (".c", ".cc", ".cpp", ".h", ".hpp")


def source_hash(*classes) -> str:
    h = hashlib.sha256()
    for name in MEASURING:
        h.update((HARNESS / name).read_bytes())
    files: list[Path] = []
    for cls in classes:
        # the class's module and those of the classes it builds on (a variant subclassing another
        # method reruns when that method changes), and what they import from beside them
        for base in cls.__mro__:
            module = inspect.getmodule(base)
            name = getattr(module, "__name__", "builtins")
            if name == "builtins" or name.split(".")[0] == "harness":
                continue
            _code_files(Path(inspect.getfile(module)).resolve(), name, files)
    for path in files:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _code_files(path: Path, module: str, found: list[Path]) -> None:
    """The module's file and, recursively, those of the modules it imports from its own folder
    (methods/_unitwise.py for snap1, methods/_sab_network.py for sab) and the computing harness
    modules it imports (harness/online.py): a helper counts for the methods that use it, not for
    every method beside it (an edit of SAB's network no longer reruns bptt). Imports are read from
    the source, functions' own included, and located without being run, so the hash does not
    depend on what a process happens to have imported. Each module brings the compiled sources
    beside it of the same stem (methods/_sab_native.cpp with methods/_sab_native.py): a module that
    compiles and loads them at run time computes with them, and no import names them."""
    if path in found:
        return
    found.append(path)
    found += [c for c in map(path.with_suffix, COMPANIONS) if c.is_file() and c not in found]
    for name in _imported_names(path, module):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, AttributeError, ValueError):   # an attribute, not a module
            continue
        if spec is None or not spec.has_location or not spec.origin:
            continue
        file = Path(spec.origin).resolve()
        beside = file.parent == path.parent and path.parent != HARNESS
        if file.suffix == ".py" and (beside or (file.parent == HARNESS and file.name in COMPUTING)):
            _code_files(file, name, found)


def _imported_names(path: Path, module: str) -> list[str]:
    """Absolute names of what the module's source imports (`from harness import online` yields
    harness and harness.online: the name may be a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from ._sab_network import ...
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parts + [node.module or ""] if p)
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return list(dict.fromkeys(n for n in names if n))


def config_hash(config: dict, code: str) -> str:
    text = json.dumps({"config": config, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def record_path(out: Path, key: str) -> Path:
    return runs_dir(out) / f"{key}.json"


_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's file-creation mask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write `path` whole or not at all, with the permissions any file the user creates gets
    (mkstemp's files are 0600: collaborators on a shared folder could not read them). An OSError
    names `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w", encoding=None if isinstance(text, bytes)
                       else "utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def save(out: Path, record: dict) -> Path:
    """Write a record; raises schema.InvalidRecord (and writes nothing) when it is not valid."""
    check(record)
    path = record_path(out, record["hash"])
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True, default=str))
    return path


def read(path: Path) -> dict:
    """The valid record stored in `path`; raises InvalidRecord saying what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidRecord(f"cannot read it: {exc.strerror or exc}") from None
    if not data.strip():
        raise InvalidRecord("empty file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRecord(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRecord(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; "
                            f"truncated?)") from None
    except RecursionError:
        raise InvalidRecord("not valid JSON (nested too deeply)") from None
    check(record)
    if record["hash"] != path.stem:
        raise InvalidRecord(f"its hash {record['hash']!r} is not its file name")
    return record


_warned: set[tuple[str, str]] = set()


def _damaged(path: Path, problem: InvalidRecord, damaged: list | None) -> None:
    """One warning line per damaged file (once per process), and count it."""
    if damaged is not None:
        damaged.append((path, str(problem)))
    key = (str(path), str(problem))
    if key not in _warned:
        _warned.add(key)
        print(f"warning: skipped damaged record {path}: {problem}; its run counts as not done", file=sys.stderr)


def load(out: Path, key: str, damaged: list | None = None) -> dict | None:
    """The valid record of run `key`, or None when there is none; a damaged one is warned about,
    appended to `damaged` as (path, problem), and treated as missing."""
    path = record_path(out, key)
    if not os.path.lexists(path):
        return None
    try:
        return read(path)
    except InvalidRecord as exc:
        _damaged(path, exc, damaged)
        return None


def is_finished(out: Path, key: str) -> bool:
    record = load(out, key)
    return record is not None and record["status"] == "ok"


def load_all(out: Path, damaged: list | None = None) -> list[dict]:
    """Every valid record in OUT/runs; damaged ones are warned about and appended to `damaged`."""
    records = []
    for path in sorted(runs_dir(out).glob("*.json")):
        try:
            records.append(read(path))
        except InvalidRecord as exc:
            _damaged(path, exc, damaged)
    return records


# --- run identity ----------------------------------------------------------------------------
def method_name(record: dict) -> str:
    """The method's registered name (the record's config may hold the file path it was loaded from)."""
    label = record.get("method_label")
    return label.split("[", 1)[0] if label else str(record["config"]["method"])


def identity_dict(record: dict) -> dict:
    return {**record["config"], "method": method_name(record)}


def identity_of(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def identity(record: dict) -> str:
    """What the run is: method name and hyperparameters, task and its parameters, model, training
    options and seed. Not the code: records of one identity made by different code are versions
    of one run, and the newest is the current one."""
    return identity_of(identity_dict(record))


def newest(records: list[dict]) -> list[dict]:
    """One record per identity: the newest (by when it finished). Each kept record carries
    `stale_ignored`, the number of older records of the same run left out (in memory only)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r:
            groups.setdefault(identity(r), []).append(r)
    kept = []
    for group in groups.values():
        group.sort(key=lambda r: (str(r.get("finished") or ""), str(r.get("started") or ""), r.get("hash", "")))
        latest = group[-1]
        stale = sum(r.get("stale_ignored", 0) for r in group) + len(group) - 1
        kept.append({**latest, "stale_ignored": stale} if stale else latest)
    return kept

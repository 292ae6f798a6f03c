"""One JSON record per run, named by a hash of its configuration and of the source code that
defines what it measures, written atomically (temporary file, then rename)."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
from pathlib import Path

HARNESS = Path(__file__).resolve().parent
# Code whose change changes a result; editing tables, plots or the command line does not rerun.
MEASURING = ["models.py", "method.py", "task.py", "meters.py", "fidelity.py", "runner.py", "credit.py",
             "trajectory.py"]


def source_hash(*classes) -> str:
    h = hashlib.sha256()
    for name in MEASURING:
        h.update((HARNESS / name).read_bytes())
    seen = set()
    for cls in classes:
        # the class's module and those of the classes it builds on (a variant subclassing another
        # method reruns when that method changes); harness's own files are in MEASURING
        for base in cls.__mro__:
            module = inspect.getmodule(base)
            name = getattr(module, "__name__", "builtins")
            if name in seen or name == "builtins" or name.split(".")[0] == "harness":
                continue
            seen.add(name)
            h.update(inspect.getsource(module).encode())
            # helper modules beside it (methods/_online.py, ...) are part of what it computes
            for helper in sorted(Path(inspect.getfile(module)).parent.glob("_*.py")):
                h.update(helper.read_bytes())
    return h.hexdigest()[:16]


def config_hash(config: dict, code: str) -> str:
    text = json.dumps({"config": config, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def record_path(out: Path, key: str) -> Path:
    return runs_dir(out) / f"{key}.json"


def write_atomic(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(out: Path, record: dict) -> Path:
    path = record_path(out, record["hash"])
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True, default=str))
    return path


def load(out: Path, key: str) -> dict | None:
    path = record_path(out, key)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a damaged record is treated as missing and rerun


def is_finished(out: Path, key: str) -> bool:
    record = load(out, key)
    return record is not None and record.get("status") == "ok"


def load_all(out: Path) -> list[dict]:
    records = []
    for path in sorted(runs_dir(out).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
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

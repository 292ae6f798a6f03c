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
             "online.py", "jacobians.py"]


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
            # helper modules beside it (methods/_unitwise.py, ...) are part of what it computes
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

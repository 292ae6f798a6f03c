"""The run record's schema: what the readers of records (tables, reports, `--collect`, tuning, a
rerun deciding what is finished) rely on. Checked when a record is written (`store.save`) and when
it is read (`store.load`, `load_all`, `is_finished`); a record that does not pass is damaged: it
is skipped with a warning and its run is redone.

The dataclasses below describe the record's JSON. A field without a default must be present; a
field with a default may be absent (records written by an older version lack some of them, and
readers show those records without that field). Keys the schema does not name are allowed, so a
newer writer may add fields. `float` accepts integers (JSON does not tell 1 from 1.0) and the
non-finite values that the standard library's JSON writes (NaN, Infinity); `int` refuses booleans.
"""
from __future__ import annotations

import re
import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import lru_cache
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

STATUSES = ("ok", "diverged", "failed")
# a record is stored as runs/<hash>.json: the hash must be a plain file name
HASH = re.compile(r"[A-Za-z0-9_-]{1,128}")


class InvalidRecord(ValueError):
    """What is wrong with a record, on one line (where in the record, then the problem)."""


@dataclass(kw_only=True)
class Config:
    """The run's configuration (harness.runner.RunConfig, one key per field; tests/test_hardening.py
    checks that every RunConfig field is described here with the same type)."""

    method: str
    task: str
    method_params: dict[str, Any]
    task_params: dict[str, Any]
    seq_len: int
    cell: str
    hidden: int
    batch: int
    seed: int
    eval_seq_len: int | None = None
    tau: float | None = None
    steps: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    clip: float | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    eval_every: int | None = None
    eval_batches: int | None = None
    fidelity_points: int | None = None
    grad_samples: int | None = None
    warmup: int | None = None


@dataclass(kw_only=True)
class Executor:
    name: str
    concurrent: int | None = None


@dataclass(kw_only=True)
class CurvePoint:
    """One evaluation on the held-out batches."""

    step: int
    sequences: int
    updates: int
    wall_s: float
    score: float
    test_loss: float
    train_loss: float | None = None
    diagnostics: dict[str, float | None] | None = None


@dataclass(kw_only=True)
class FidelityPoint:
    """One fidelity checkpoint (the fidelity helper's further figures are free-form extras)."""

    step: int
    cosine: float | None = None
    cosine_recurrent: float | None = None
    rel_error: float | None = None
    groups: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Final:
    score: float
    test_loss: float | None = None
    validation_score: float | None = None
    validation_loss: float | None = None


@dataclass(kw_only=True)
class Memory:
    saved_bytes: float | None = None
    state_bytes: float | None = None
    cuda_peak_bytes: float | None = None


@dataclass(kw_only=True)
class Time:
    ms_per_step: float | None = None
    ms_per_update: float | None = None
    updates_per_step: float | None = None
    threads: int | None = None
    timed_steps: int | None = None


@dataclass(kw_only=True)
class CreditByLag:
    lag: list[int]
    norm: list[float | None]
    terms: list[int] | None = None


@dataclass(kw_only=True)
class Record:
    """Every record: a failed run has its configuration, status and error and little else."""

    hash: str
    config: Config
    status: Literal["ok", "diverged", "failed"]
    code_hash: str | None = None
    env: dict[str, Any] | None = None
    executor: Executor | None = None
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    traceback: str | None = None
    # stored so that reading a record never imports the method or task it names
    method_label: str | None = None
    method_name: str | None = None
    method_defaults: dict[str, Any] | None = None
    gradient_kind: str | None = None
    metric: str | None = None
    chance: float | None = None
    higher_is_better: bool | None = None
    solved_threshold: float | None = None
    num_steps: int | None = None
    eval_num_steps: int | None = None
    n_params: int | None = None
    curve: list[CurvePoint] | None = None
    final: Final | None = None
    fidelity: list[FidelityPoint] | None = None
    fidelity_own: list[FidelityPoint] | None = None
    fidelity_reference: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    diverged_at: int | None = None
    memory: Memory | None = None
    time: Time | None = None
    credit_by_lag: CreditByLag | None = None
    params_sha: str | None = None
    steps_done: int | None = None
    resumed_from_step: int | None = None
    tuned: str | None = None


@dataclass(kw_only=True)
class OkRecord(Record):
    """A finished run: the tables read its final score and the figures its learning curve."""

    curve: list[CurvePoint] = field(metadata={"min_length": 1})
    final: Final


def check(record: Any) -> None:
    """Raise InvalidRecord saying where and what, when `record` is not a valid record."""
    if not isinstance(record, dict):
        raise InvalidRecord(f"expected a JSON object at the top level, found {_kind(record)}")
    _check(record, OkRecord if record.get("status") == "ok" else Record, "")
    if not HASH.fullmatch(record["hash"]):
        raise InvalidRecord(f"hash: {_short(record['hash'])} is not a plain file name")


def _check(value: Any, tp: Any, where: str) -> None:
    if tp is Any:
        return
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise InvalidRecord(f"{where or 'record'}: expected an object, found {_kind(value)}")
        hints = _hints(tp)
        for f in fields(tp):
            at = f"{where}.{f.name}" if where else f.name
            if f.name not in value:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise InvalidRecord(f"{at}: missing")
                continue
            _check(value[f.name], hints[f.name], at)
            if "min_length" in f.metadata and len(value[f.name]) < f.metadata["min_length"]:
                raise InvalidRecord(f"{at}: empty")
        return
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _check(value, option, where)
            except InvalidRecord as exc:
                errors.append(exc)
        if len(options) == 1:
            raise errors[0]
        raise InvalidRecord(f"{where}: expected {_describe(tp)}, found {_kind(value)}")
    if origin is Literal:
        if value not in args or isinstance(value, bool):
            raise InvalidRecord(f"{where}: expected one of {', '.join(map(str, args))}, found {_kind(value)}")
        return
    if tp is list or origin is list:
        if not isinstance(value, list):
            raise InvalidRecord(f"{where}: expected a list, found {_kind(value)}")
        for i, item in enumerate(value):
            _check(item, args[0] if args else Any, f"{where}[{i}]")
        return
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise InvalidRecord(f"{where}: expected an object, found {_kind(value)}")
        for key, item in value.items():
            _check(item, args[1] if args else Any, f"{where}.{key}")
        return
    if not _is(value, tp):
        raise InvalidRecord(f"{where}: expected {_describe(tp)}, found {_kind(value)}")


def _is(value: Any, tp: type) -> bool:
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return get_type_hints(cls)


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, "a list" if (tp is list or origin is list) else "an object")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (int, float, str)):
        return f"{type(value).__name__} {_short(value)}"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."

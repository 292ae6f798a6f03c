"""Declared hyperparameters, the `name[key=value,...]` syntax, and the one error type for bad input.

Methods and tasks declare their options as `Param`s; everything the user types is validated here,
before any training starts, and every failure is a `ConfigError` whose message is one line.
"""
from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

# the most runs one command may hold (a grid of tens of thousands is already days of CPU)
MAX_RUNS = 100_000
# characters str.splitlines() breaks on: a message shows them escaped, so it stays one line
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class ConfigError(ValueError):
    """Bad input: the command line prints `error: <message>` and exits with code 2. The message
    is one line whatever the input held."""

    def __init__(self, message: Any = ""):
        super().__init__(one_line(str(message)))


def one_line(text: str) -> str:
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity|nan)", re.I)


def parse_int(text: str) -> int:
    """An integer written in ASCII digits; int() would also take '5_0' (50) and other scripts'
    digits. Raises ValueError."""
    text = text.strip()
    if not _INT.fullmatch(text):
        raise ValueError(f"invalid integer {text!r}")
    return int(text)


def parse_float(text: str, finite: bool = True) -> float:
    """A decimal number ('1e-3', '.5', '2'), finite unless `finite` is False; no underscores.
    Raises ValueError."""
    text = text.strip()
    if not _FLOAT.fullmatch(text):
        raise ValueError(f"invalid number {text!r}")
    value = float(text)
    if finite and not math.isfinite(value):
        raise ValueError(f"{text!r} is not finite")
    return value


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, word: str, choices: Sequence[str]) -> ConfigError:
    known = ", ".join(sorted(choices)) or "none"
    return ConfigError(f"unknown {kind} '{word}'{did_you_mean(word, choices)}; known: {known}")


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its default, its type, and what values are allowed."""

    default: Any
    type: type = int
    help: str = ""
    choices: tuple | None = None
    check: Callable[[Any], bool] | None = None
    allowed: str = ""  # words for the error message when `check` fails, e.g. "a positive integer"
    optional: bool = False  # None allowed (means "derive from another option")

    def parse(self, owner: str, key: str, value: Any) -> Any:
        if value is None and (self.optional or self.default is None):
            return None
        if isinstance(value, str):
            value = _from_text(value, self.type, owner, key, self._describe())
        elif self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ConfigError(f"{owner}: {key}={value!r} is not {self._describe()}")
        if self.type is float and not math.isfinite(value):
            raise ConfigError(f"{owner}: {key}={value!r} is not {self._describe()} (not finite)")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{owner}: {key}={value!r} is not one of {', '.join(map(str, self.choices))}"
                              f"{did_you_mean(str(value), [str(c) for c in self.choices])}")
        if self.check is not None and not self.check(value):
            raise ConfigError(f"{owner}: {key}={value!r} is not {self._describe()}")
        return value

    def _describe(self) -> str:
        if self.allowed:
            return self.allowed
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[self.type]


def positive_int(default, help="", optional=False) -> Param:
    return Param(default, int, help, check=lambda v: v > 0, allowed="a positive integer", optional=optional)


def _from_text(text: str, typ: type, owner: str, key: str, describe: str) -> Any:
    try:
        if typ is bool:
            low = text.strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return parse_int(text)
        if typ is float:
            return parse_float(text, finite=False)   # Param.parse says why inf and nan are refused
        return text
    except ValueError:
        raise ConfigError(f"{owner}: {key}={text!r} is not {describe}") from None


def validate_params(owner: str, declared: dict[str, Param], given: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and validate; unknown keys are an error naming the nearest known key."""
    for key in given:
        if key not in declared:
            raise unknown(f"hyperparameter of {owner}", key, list(declared))
    return {key: spec.parse(owner, key, given.get(key, spec.default)) for key, spec in declared.items()}


@dataclass
class Spec:
    """A parsed `name[key=value,...]` item of a comma-separated list."""

    name: str
    params: dict[str, str] = field(default_factory=dict)


def split_top_level(text: str, sep: str = ",", keep_empty: bool = False) -> list[str]:
    """Split on `sep` outside brackets: 'a[x=1,y=2],b' -> ['a[x=1,y=2]', 'b']."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"unbalanced ']' in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ConfigError(f"unbalanced '[' in {text!r}")
    parts.append("".join(current).strip())
    return parts if keep_empty else [p for p in parts if p]


def parse_spec(item: str) -> Spec:
    """'tbptt[k=5,update=sequence]' -> Spec('tbptt', {'k': '5', 'update': 'sequence'})."""
    item = item.strip()
    if "[" not in item:
        if not item or "]" in item or "=" in item:
            raise ConfigError(f"cannot read {item!r}: expected name or name[key=value,...]")
        return Spec(item)
    if not item.endswith("]"):
        raise ConfigError(f"cannot read {item!r}: expected name[key=value,...]")
    name, inner = item[: item.index("[")].strip(), item[item.index("[") + 1: -1]
    if not name:
        raise ConfigError(f"cannot read {item!r}: missing name before '['")
    params: dict[str, str] = {}
    for pair in split_top_level(inner):
        if "=" not in pair:
            raise ConfigError(f"{name}: cannot read {pair!r}: expected key=value")
        key, value = (s.strip() for s in pair.split("=", 1))
        if "[" in key or "]" in key:
            raise ConfigError(f"{name}: cannot read {pair!r}: expected key=value")
        if not key or key in params:
            raise ConfigError(f"{name}: {'empty' if not key else 'repeated'} key in {item!r}")
        params[key] = value
    return Spec(name, params)


def grid_values(owner: str, key: str, value: str) -> list[str]:
    """'5' -> ['5']; '[5,10,20]' -> ['5', '10', '20'] (one level: a list of plain values)."""
    if "[" not in value and "]" not in value:
        return [value]
    if not (value.startswith("[") and value.endswith("]")):
        raise ConfigError(f"{owner}: cannot read {key}={value!r}: a list of values is written [v1,v2,...]")
    items = split_top_level(value[1:-1], keep_empty=True)
    if items == [""]:
        raise ConfigError(f"{owner}: {key}={value} is an empty list")
    for item in items:
        if not item:
            raise ConfigError(f"{owner}: {key}={value} has an empty item")
        if "[" in item or "]" in item:
            raise ConfigError(f"{owner}: {key}={value}: lists do not nest ({item!r})")
    repeated = sorted({i for i in items if items.count(i) > 1})
    if repeated:
        raise ConfigError(f"{owner}: {key}={value} repeats {', '.join(repeated)}")
    return items


def expand_spec(spec: Spec) -> list[Spec]:
    """Values that are lists expand to the cartesian product, in the order written:
    tbptt[k=[5,10],update=[window,sequence]] -> k=5 window, k=5 sequence, k=10 window, k=10 sequence."""
    axes = [[(key, v) for v in grid_values(spec.name, key, value)] for key, value in spec.params.items()]
    check_runs(math.prod(len(a) for a in axes), f"{spec.name}[...]")
    return [Spec(spec.name, dict(combo)) for combo in itertools.product(*axes)]


def parse_spec_list(text: str) -> list[Spec]:
    """'tbptt[k=[5,10]],bptt' -> [tbptt k=5, tbptt k=10, bptt]: items, each expanded as a grid."""
    specs = []
    for part in split_top_level(text):
        specs += expand_spec(parse_spec(part))
        check_runs(len(specs), "the list")
    if not specs:
        raise ConfigError(f"empty list {text!r}")
    return specs


def check_runs(n: int, what: str) -> None:
    """Refuse a grid of more than MAX_RUNS runs before building it."""
    if n > MAX_RUNS:
        raise ConfigError(f"{what} makes {n} runs, more than the {MAX_RUNS} one command may hold; "
                          "split the sweep into several commands")

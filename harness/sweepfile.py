"""Sweep files: the command line's options written down in YAML or TOML, one key per option.

    methods: "tbptt[k=[5,10,20]],bptt"        # or a list of items, or a mapping name -> options
    tasks: [copy, adding]
    seq_len: [100, 200, 400]
    seeds: 5
    slurm_param: {mem_gb: 16, constraint: volta}

Keys are the long option names with '-' or '_'. Every value goes through the same parsing and
checks as on the command line, and the command line overrides the file. Any problem (not UTF-8,
a syntax error, a key given twice, an unknown key, a bad value) is one `ConfigError` naming the
file, the line and the key.
"""
from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, did_you_mean

NOT_IN_FILE = {"help", "config"}
LIST_OPTIONS = {"methods", "tasks", "seq_len", "tune"}   # written as comma-separated lists on the command line


def load(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Parsed option values by argparse `dest`, ready for `parser.set_defaults`."""
    path = Path(path)
    data, text = _read(path)
    actions = {a.dest: a for a in parser._actions if a.dest not in NOT_IN_FILE and a.option_strings}
    values = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        where = f"{path.name} line {_line_of(text, str(raw_key))}: {raw_key}"
        if key not in actions:
            raise ConfigError(f"{where}: unknown option{did_you_mean(key, list(actions))}; "
                              f"keys are the long options of run_all.py --help")
        if value is None:
            raise ConfigError(f"{where}: no value")
        try:
            values[key] = _parse(actions[key], key, value)
        except (ConfigError, argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return values


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the safe loader keeps the
    last value silently), reporting a value it cannot build (a date like 2024-13-45) with its line
    as a YAML error, and reading numbers as YAML 1.2 does: PyYAML follows YAML 1.1, where 5_0 is
    50, 1:30:00 is 5400 (base 60) and 017 is 15 (octal); here they are words (the option's own
    parser then says what is wrong, or reads 1:30:00 as a time) and 017 is 17."""

    INT = re.compile(r"[-+]?[0-9]+")

    def construct_decimal_int(self, node):
        value = self.construct_scalar(node)
        return int(value) if self.INT.fullmatch(value) else self.construct_yaml_int(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":   # '<<: *base' overrides on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in first:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} given twice (first on line {first[key] + 1})",
                            key_node.start_mark)
                    first[key] = key_node.start_mark.line
                except TypeError:   # an unhashable key: the safe loader says so
                    continue
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {node.value!r}: {exc}",
                                                    node.start_mark) from None


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
UniqueKeyLoader.add_implicit_resolver(_INT_TAG, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
UniqueKeyLoader.add_implicit_resolver(
    _FLOAT_TAG, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                           r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
UniqueKeyLoader.add_constructor(_INT_TAG, UniqueKeyLoader.construct_decimal_int)


def _read(path: Path) -> tuple[dict, str]:
    if path.is_dir():
        raise ConfigError(f"sweep file '{path}' is a directory, not a file")
    if not path.is_file():
        raise ConfigError(f"sweep file '{path}' does not exist")
    if path.suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(f"sweep file '{path}': expected .yaml, .yml or .toml")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"sweep file '{path}': cannot read it: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path.name} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            data = yaml.load(text, Loader=UniqueKeyLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{path.name}{line}: cannot read YAML: {problem}") from None
        except RecursionError:
            raise ConfigError(f"{path.name}: cannot read YAML: nested too deeply") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path.name}: cannot read TOML: {str(exc).splitlines()[0]}") from None
        except RecursionError:
            raise ConfigError(f"{path.name}: cannot read TOML: nested too deeply") from None
    if data is None:
        raise ConfigError(f"{path.name}: the sweep file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected option: value pairs at the top level, found a "
                          f"{type(data).__name__}")
    return data, text


def _line_of(text: str, key: str) -> int | str:
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*[:=]")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return "?"


def _parse(action: argparse.Action, key: str, value: Any) -> Any:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):   # repeatable key=value options (slurm_param)
        items = value.items() if isinstance(value, dict) else None
        if items is None:
            raise ConfigError(f"expected a mapping of key: value, got {value!r}")
        return [action.type(f"{k}={_scalar(v)}") if action.type else f"{k}={_scalar(v)}" for k, v in items]
    if key == "tune" and isinstance(value, dict):
        text = ",".join(f"{k}={_listed(v)}" for k, v in value.items())
    elif key in ("methods", "tasks"):
        text = _specs(value)
    elif key in LIST_OPTIONS and isinstance(value, list):
        text = ",".join(_scalar(v) for v in value)
    elif isinstance(value, (list, dict)):
        raise ConfigError(f"expected a single value, got {value!r}")
    else:
        text = _scalar(value)
    parsed = action.type(text) if action.type else text
    if action.choices is not None and parsed not in action.choices:
        raise ConfigError(f"{parsed!r} is not one of {', '.join(map(str, action.choices))}"
                          f"{did_you_mean(str(parsed), [str(c) for c in action.choices])}")
    return parsed


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    raise ConfigError(f"expected a number or a word, got {v!r}")


def _listed(v: Any) -> str:
    if isinstance(v, list):
        if not v:
            raise ConfigError("empty list")
        return "[" + ",".join(_scalar(x) for x in v) + "]"
    return _scalar(v)


def _specs(value: Any) -> str:
    """A string, a list of strings or single-key mappings, or a mapping name -> {option: value or list}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        items = []
        for name, params in value.items():
            if params is None or params == {}:
                items.append(str(name))
            elif isinstance(params, dict):
                items.append(f"{name}[{','.join(f'{k}={_listed(v)}' for k, v in params.items())}]")
            else:
                raise ConfigError(f"{name}: expected a mapping of option: value, got {params!r}")
        return ",".join(items)
    if isinstance(value, list) and value:
        return ",".join(_specs(v) if isinstance(v, (str, dict)) else _scalar(v) for v in value)
    raise ConfigError(f"expected a name, a list or a mapping, got {value!r}")

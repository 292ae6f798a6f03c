"""Find methods and tasks by file: every module in `methods/` or `tasks/` that defines a subclass of
`Method` or `Task` with a `name` is registered; nothing else has to be edited to add one.

Out-of-tree entries are accepted as `path/to/file.py` or `package.module:ClassName`.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
from pathlib import Path

from .config import ConfigError, unknown

ROOT = Path(__file__).resolve().parent.parent
MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)


class Registry:
    def __init__(self, kind: str, base: type, package: str):
        self.kind, self.base, self.package = kind, base, package
        self._entries: dict[str, type] | None = None
        self._external: dict[str, type] = {}  # loaded once: a second import would be a new, 'duplicate' class

    def add(self, cls: type, entries: dict[str, type] | None = None) -> None:
        entries = self.entries if entries is None else entries
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{cls.__module__}.{cls.__qualname__} has no 'name'")
        if name in entries and entries[name] is not cls:
            other = entries[name]
            raise ConfigError(f"duplicate {self.kind} name '{name}': {other.__module__}.{other.__qualname__} "
                              f"and {cls.__module__}.{cls.__qualname__}")
        entries[name] = cls

    @property
    def entries(self) -> dict[str, type]:
        if self._entries is None:
            entries: dict[str, type] = {}
            pkg = importlib.import_module(self.package)
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
                if info.name.startswith("_"):
                    continue
                module = importlib.import_module(f"{self.package}.{info.name}")
                for cls in self._classes_in(module):
                    self.add(cls, entries)
            self._entries = entries
        return self._entries

    def _classes_in(self, module) -> list[type]:
        return [c for _, c in inspect.getmembers(module, inspect.isclass)
                if issubclass(c, self.base) and c is not self.base and c.__module__ == module.__name__
                and isinstance(c.__dict__.get("name"), str)]

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> type:
        """The class registered as `name`, or the one in a file.py or package.module:Class that
        `name` refers to (imported: only names the user gave, never names read from a record)."""
        if name.endswith(".py") or ":" in name:
            if "\0" in name:
                raise ConfigError(f"cannot read {self.kind} {name!r}: a name holds no NUL character")
            try:
                ref = str(Path(name).resolve()) if name.endswith(".py") else name
            except (OSError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"{self.kind} file {name!r}: {exc}") from None
            if ref not in self._external:
                self._external[ref] = self._load_external(name)
            return self._external[ref]
        if name not in self.entries:
            raise unknown(self.kind, name, self.names())
        return self.entries[name]

    def _load_external(self, ref: str) -> type:
        if ref.endswith(".py"):
            path = Path(ref)
            try:
                found = path.is_file()
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{self.kind} file {ref!r}: {exc}") from None
            if not found:
                raise ConfigError(f"{self.kind} file '{ref}' does not exist")
            mod_name = f"_external_{self.kind}_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except (Exception, SystemExit) as exc:  # user code: report it on one line
                sys.modules.pop(mod_name, None)
                raise ConfigError(f"cannot import {self.kind} file '{ref}': {type(exc).__name__}: {exc}") from None
            classes = self._classes_in(module)
            if len(classes) != 1:
                raise ConfigError(f"{self.kind} file '{ref}' must define exactly one {self.base.__name__} "
                                  f"subclass with a name, found {len(classes)}")
            cls = classes[0]
        else:
            mod_name, _, attr = ref.partition(":")
            if not (MODULE.fullmatch(mod_name) and attr.isidentifier()):
                raise ConfigError(f"cannot read {self.kind} {ref!r}: expected file.py or package.module:ClassName")
            try:
                module = importlib.import_module(mod_name)
            except ImportError as exc:
                raise ConfigError(f"cannot import {self.kind} module '{mod_name}': {exc}") from None
            except (Exception, SystemExit) as exc:  # user code: report it on one line
                raise ConfigError(f"cannot import {self.kind} module '{mod_name}': {type(exc).__name__}: {exc}") from None
            cls = getattr(module, attr, None)
            if not (inspect.isclass(cls) and issubclass(cls, self.base)):
                raise ConfigError(f"'{ref}' is not a {self.base.__name__} subclass")
        self.add(cls)
        return cls


def _make():
    from .method import Method
    from .task import Task
    return Registry("method", Method, "methods"), Registry("task", Task, "tasks")


METHODS, TASKS = _make()

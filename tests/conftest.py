import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.method import RunSpec  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--method-file", action="append", default=None, metavar="FILE",
                     help="run the conformance suite (tests/test_conformance.py) on the method in FILE (a .py file "
                          "or package.module:Class; repeatable) instead of the methods in methods/, and deselect "
                          "every other test")


def method_refs(config) -> list[str]:
    """What the conformance suite runs over: the --method-file methods, else every registered one."""
    from harness.config import ConfigError
    from harness.registry import METHODS
    files = config.getoption("method_file")
    if not files:
        return METHODS.names()
    refs = [str(Path(f).resolve()) if f.endswith(".py") else f for f in files]
    for ref in refs:
        try:
            METHODS.get(ref)
        except ConfigError as exc:
            raise pytest.UsageError(f"--method-file: {exc}") from None
    return refs


def pytest_collection_modifyitems(config, items):
    if not config.getoption("method_file"):
        return
    keep = [item for item in items if item.path.name == "test_conformance.py"]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def tiny_spec(cell="lstm", input_size=3, hidden=4, output=5, steps=7, batch=2, dtype=torch.float64):
    return RunSpec(cell, input_size, hidden, output, steps, batch, dtype)


def tiny_batch(task_name="copy", seq_len=4, batch=2, seed=0, dtype=torch.float64, **params):
    from harness.registry import TASKS
    task = TASKS.get(task_name)(seq_len, **params)
    return task, next(task.stream(seed, "train", batch)).to(dtype=dtype)


def build(method, cell, task, batch_size=2, seed=0, hidden=4, dtype=torch.float64):
    spec = RunSpec(cell, task.input_size, hidden, task.output_size, task.num_steps, batch_size, dtype)
    torch.manual_seed(seed)
    return method.build_network(spec).to(dtype), spec

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.method import RunSpec  # noqa: E402


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

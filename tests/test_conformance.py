"""One suite over every registered method (and each of its `test_params`), every cell and task.

A method that does not support a cell must refuse it in `check` with a one-line ConfigError.
"""
import copy
import dataclasses
import math

import pytest
import torch

from harness.config import ConfigError
from harness.fidelity import flat, reference_gradient
from harness.method import GRADIENT_KINDS, Regime, Updater
from harness.registry import METHODS, TASKS
from harness.runner import RunConfig, train
from conftest import build, tiny_batch

CASES = [(name, params) for name in METHODS.names() for params in METHODS.get(name).test_params]
IDS = [f"{n}{p or ''}" for n, p in CASES]


def make(name, params, cell, task_name="copy", batch_size=2):
    task, batch = tiny_batch(task_name, seq_len=3, batch=batch_size)
    method = METHODS.get(name)(**params)
    try:
        net, spec = build(method, cell, task, batch_size)
        method.check(spec)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"{name} refuses {cell}: {exc}")
    return method, net, batch


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_declares_itself(name, params):
    cls = METHODS.get(name)
    assert cls.description and cls.paper and cls.gradient_kind in GRADIENT_KINDS
    assert cls(**params).label.startswith(name)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("task_name", ["copy", "adding"])
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_gradient_shapes_fidelity_and_no_side_effects(name, params, cell, task_name):
    method, net, batch = make(name, params, cell, task_name)
    before = copy.deepcopy(net.state_dict())
    loss, grads = method.gradient(net, batch, torch.Generator().manual_seed(0))
    for (n, p), g in zip(net.named_parameters(), grads):
        assert g.shape == p.shape, n
        assert torch.isfinite(g).all(), n
    assert isinstance(loss, float)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"gradient() changed {k}"
    ref = flat(reference_gradient(net, batch))
    err = ((flat(grads) - ref).norm() / ref.norm()).item()
    if method.gradient_kind == "exact":
        assert err < 1e-10
    else:
        assert err == err  # finite; approximate methods are characterised, not bounded, here


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_training_is_deterministic_and_updates(name, params, cell):
    results = []
    for _ in range(2):
        method, net, _ = make(name, params, cell)
        task, _ = tiny_batch("copy", seq_len=3, batch=2)
        stream = task.stream(0, "train", 2)
        updater = Updater(net, torch.optim.Adam(net.parameters(), lr=1e-2), clip=1.0)
        rng = torch.Generator().manual_seed(0)
        start = [p.detach().clone() for p in net.parameters()]
        losses = [method.train_step(net, next(stream).to(dtype=torch.float64), updater, rng) for _ in range(2)]
        assert updater.updates >= 2
        assert any(not torch.equal(a, p) for a, p in zip(start, net.parameters()))
        results.append((losses, [p.detach().clone() for p in net.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_state_bytes_is_a_count(name, params):
    method, net, batch = make(name, params, "rnn")
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=1e-3), clip=None)
    method.train_step(net, batch, updater, torch.Generator().manual_seed(0))
    assert isinstance(method.state_bytes(), int) and method.state_bytes() >= 0


TASK_NAMES = TASKS.names()


@pytest.mark.parametrize("task_name", TASK_NAMES)
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_tiny_end_to_end_run_on_every_task(name, params, task_name, tmp_path):
    """Every method trains on every task's tiny example through the runner; exact ones match BPTT."""
    task = TASKS.get(task_name).example(tmp_path)
    cfg = RunConfig(method=name, method_params=dict(params), task=task_name, task_params=dict(task.params),
                    seq_len=task.seq_len, cell="lstm", hidden=4, batch=2, steps=2, eval_every=1, eval_batches=1,
                    fidelity_points=2, grad_samples=2, dtype="float64")
    try:
        cfg.validate()
    except ConfigError as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"{name} refuses {task_name}: {exc}")
    record = train(cfg)
    assert record["status"] == "ok" and record["steps_done"] == 2
    assert record["metric"] == task.metric and record["chance"] == task.chance
    assert record["higher_is_better"] == task.higher_is_better and record["num_steps"] == task.num_steps
    scores = [c["score"] for c in record["curve"]]
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    if task.metric == "accuracy":
        assert all(0 <= s <= 1 for s in scores)
    else:
        assert all(s >= 0 for s in scores)
    if METHODS.get(name).gradient_kind == "exact":
        assert all(f["rel_error"] < 1e-10 for f in record["fidelity_own"])   # at its own parameters


def _regime_cases():
    cases = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        if cls.gradient_kind != "stochastic":   # one step: no past to approximate
            cases.append((name, Regime("one-step sequence", num_steps=1)))
        cases.extend((name, regime) for regime in cls.exact_regimes)
    return cases


REGIMES = _regime_cases()


def _prefix(batch, n):
    """The first n steps of a batch (copy with loss_on=all: every prefix has loss terms)."""
    return dataclasses.replace(batch, x=batch.x[:n], y=batch.y[:n], mask=batch.mask[:n],
                               score_mask=batch.score_mask[:n])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("name,regime", REGIMES, ids=[f"{n}-{r.why}" for n, r in REGIMES])
def test_exact_in_declared_regimes(name, regime, cell):
    """Every method equals the reference gradient where it declares it must (float64, < 1e-10)."""
    if regime.cells is not None and cell not in regime.cells:
        pytest.skip(f"{name}: regime '{regime.why}' is for {', '.join(regime.cells)}")
    method, net, batch = make(name, regime.params, cell)
    if regime.num_steps is not None:
        batch = _prefix(batch, regime.num_steps)
    if regime.prepare is not None:
        with torch.no_grad():
            regime.prepare(net)
    _, grads = method.gradient(net, batch, torch.Generator().manual_seed(0))
    ref = flat(reference_gradient(net, batch))
    assert ref.norm() > 0
    err = ((flat(grads) - ref).norm() / ref.norm()).item()
    assert err < 1e-10, f"{name} {regime.params} ({regime.why}) on {cell}: relative error {err:.2e}"

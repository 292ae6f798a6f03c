"""One suite over every registered method (and each of its `test_params`), every cell and task.

A method that does not support a cell must refuse it in `check` with a one-line ConfigError.
`python -m pytest tests --method-file my_method.py` runs this suite on the method in that file (or
`package.module:Class`) instead of those in methods/, and nothing else (tests/conftest.py).
"""
import copy
import dataclasses
import math

import pytest
import torch

from harness.config import ConfigError
from harness.fidelity import flat, reference_gradient
from harness.method import GRADIENT_KINDS, Regime, Updater
from harness.models import CELLS
from harness.registry import METHODS, TASKS
from harness.runner import RunConfig, train
from conftest import build, method_refs, tiny_batch

CELL_NAMES = list(CELLS)
# the end-to-end run takes the first cell a method supports, the command line's default first
CELL_ORDER = ["lstm"] + [c for c in CELL_NAMES if c != "lstm"]


def method_class(ref):
    return ref if isinstance(ref, type) else METHODS.get(ref)


def _cases(refs):
    return [(ref, params) for ref in refs for params in method_class(ref).test_params]


def _regime_cases(refs):
    cases = []
    for ref in refs:
        cls = method_class(ref)
        if cls.gradient_kind != "stochastic" and cls.one_step_params is not None:   # no past to approximate
            cases.append((ref, Regime("one-step sequence", params=dict(cls.one_step_params), num_steps=1)))
        cases.extend((ref, regime) for regime in cls.exact_regimes)
    return cases


def pytest_generate_tests(metafunc):
    refs = method_refs(metafunc.config)
    if "params" in metafunc.fixturenames:
        cases = _cases(refs)
        metafunc.parametrize("name,params", cases, ids=[f"{method_class(n).name}{p or ''}" for n, p in cases])
    elif "regime" in metafunc.fixturenames:
        cases = _regime_cases(refs)
        metafunc.parametrize("name,regime", cases, ids=[f"{method_class(n).name}-{r.why}" for n, r in cases])


def make(name, params, cell, task_name="copy", batch_size=2):
    task, batch = tiny_batch(task_name, seq_len=3, batch=batch_size)
    method = method_class(name)(**params)
    try:
        net, spec = build(method, cell, task, batch_size)
        method.check(spec)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"{method.name} refuses {cell}: {exc}")
    return method, net, batch


def test_declares_itself(name, params):
    cls = method_class(name)
    assert cls.description and cls.paper and cls.gradient_kind in GRADIENT_KINDS
    assert cls(**params).label.startswith(cls.name)


@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("task_name", ["copy", "adding"])
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


@pytest.mark.parametrize("cell", CELL_NAMES)
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


def test_state_bytes_is_a_count(name, params):
    method, net, batch = make(name, params, "rnn")
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=1e-3), clip=None)
    method.train_step(net, batch, updater, torch.Generator().manual_seed(0))
    assert isinstance(method.state_bytes(), int) and method.state_bytes() >= 0


TASK_NAMES = TASKS.names()


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_tiny_end_to_end_run_on_every_task(name, params, task_name, tmp_path):
    """Every method trains on every task's tiny example through the runner, on the first cell it
    supports (lstm, rnn, gru, leaky); exact ones match BPTT."""
    task = TASKS.get(task_name).example(tmp_path)
    refusals = []
    for cell in CELL_ORDER:
        cfg = RunConfig(method=str(name), method_params=dict(params), task=task_name,
                        task_params=dict(task.params), seq_len=task.seq_len, cell=cell, hidden=4, batch=2, steps=2,
                        eval_every=1, eval_batches=1, fidelity_points=2, grad_samples=2, dtype="float64")
        try:
            cfg.validate()
            break
        except ConfigError as exc:
            assert "\n" not in str(exc)
            refusals.append(str(exc))
    else:
        pytest.skip(f"{name} refuses {task_name} on every cell: {'; '.join(refusals)}")
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
    if method_class(name).gradient_kind == "exact":
        assert all(f["rel_error"] < 1e-10 for f in record["fidelity_own"])   # at its own parameters


def _prefix(batch, n):
    """The first n steps of a batch (copy with loss_on=all: every prefix has loss terms)."""
    return dataclasses.replace(batch, x=batch.x[:n], y=batch.y[:n], mask=batch.mask[:n],
                               score_mask=batch.score_mask[:n])


def regime_error(name, regime, cell) -> float:
    """Relative error of the method's gradient against the reference in `regime` on the tiny network."""
    if regime.cells is not None and cell not in regime.cells:
        pytest.skip(f"{method_class(name).name}: regime '{regime.why}' is for {', '.join(regime.cells)}")
    method, net, batch = make(name, regime.params, cell)
    if regime.num_steps is not None:
        batch = _prefix(batch, regime.num_steps)
    if regime.prepare is not None:
        with torch.no_grad():
            regime.prepare(net)
    _, grads = method.gradient(net, batch, torch.Generator().manual_seed(0))
    ref = flat(reference_gradient(net, batch))
    assert ref.norm() > 0
    return ((flat(grads) - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_exact_in_declared_regimes(name, regime, cell):
    """Every method equals the reference gradient where it declares it must (float64, < 1e-10)."""
    err = regime_error(name, regime, cell)
    assert err < 1e-10, (f"{method_class(name).name} {regime.params} ({regime.why}) on {cell}: "
                         f"relative error {err:.2e}")


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_regime_check_catches_snap1_without_d_t_in_its_immediate_term(cell, request):
    """The suite's power: SnAp-1 with D_t missing from the immediate term (issue 18's example) has
    finite gradients of the right shapes, which is all an approximate method was once checked for,
    but fails its declared regime (diagonal W_hh), while the correct SnAp-1 passes it."""
    if request.config.getoption("method_file"):
        pytest.skip("a test of the suite itself")
    from harness.jacobians import UnitJacobians
    from methods.snap1 import SnAp1

    class SnAp1WithoutDt(SnAp1):
        def unit_terms(self, cell, x, prev, new):
            units = super().unit_terms(cell, x, prev, new)
            ones = [torch.ones_like(c) for c in units.Ci]
            return UnitJacobians(ones, ones, units.Ds)

    (regime,) = SnAp1.exact_regimes
    method, net, batch = make(SnAp1WithoutDt, {}, cell)
    _, grads = method.gradient(net, batch, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(g).all() and g.shape == p.shape for g, p in zip(grads, net.parameters()))
    assert regime_error(SnAp1, regime, cell) < 1e-10
    assert regime_error(SnAp1WithoutDt, regime, cell) > 1e-2

"""Online methods (rtrl, uoro, kf_rtrl; snap1, eprop, rflo in test_online_family.py) against the reference gradient (full BPTT of the same network).

rtrl must equal the reference in float64; uoro and kf_rtrl must be exactly unbiased, which is checked
by enumerating every sign pattern on a tiny network (the mean over all patterns is the expectation),
and statistically at a larger size.
"""
import itertools

import pytest
import torch

from harness.config import ConfigError
from harness.fidelity import flat, reference_gradient, stochastic_figures
from harness.method import RunSpec, Updater
from harness.models import build_network
from harness.registry import METHODS
from harness.task import Batch

INPUT = 3   # differs from every hidden size used below


def regression_batch(L, B, input_size=INPUT, out=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, B, input_size, generator=g, dtype=torch.float64)
    y = torch.randn(L, B, out, generator=g, dtype=torch.float64)
    mask = torch.ones(L, B, dtype=torch.float64)
    mask[0, 0] = 0.0   # a step without loss in one lane
    return Batch(x, y, mask, mask.clone(), "mse")


def network(cell, hidden, seed=0, input_size=INPUT, out=2):
    torch.manual_seed(seed)
    return build_network(cell, input_size, hidden, out).double()


def rel_err(grads, ref):
    g, r = flat(grads), flat(ref)
    return float((g - r).norm() / r.norm())


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "leaky"])
def test_rtrl_equals_reference_in_float64(cell):
    net, batch = network(cell, 4), regression_batch(6, 3)
    loss, grads = METHODS.get("rtrl")().gradient(net, batch, torch.Generator().manual_seed(0))
    assert rel_err(grads, reference_gradient(net, batch)) < 1e-10
    with torch.no_grad():
        out, _ = net(batch.x)
    assert loss == pytest.approx(float(batch.loss(out)), rel=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "leaky"])
def test_rtrl_generic_path_agrees_with_structured_rnn_path(cell):
    # hidden 12: the structured path blocks the parameter rows in groups of 4 (three blocks)
    method, net, batch = METHODS.get("rtrl")(), network(cell, 12), regression_batch(5, 2)
    _, fast = method.gradient(net, batch, None)
    assert method.M.shape[1] == 3
    assert rel_err(fast, reference_gradient(net, batch)) < 1e-10
    method.structured = False
    _, generic = method.gradient(net, batch, None)
    assert rel_err(generic, fast) < 1e-12


class Enumerated:
    """Replaces a method's sign draws by one fixed pattern per step (shared by every lane)."""

    def __init__(self, patterns):
        self.patterns, self.t = patterns, 0

    def __call__(self, rng, shape, like):
        signs = torch.tensor(self.patterns[self.t], dtype=like.dtype).expand(shape)
        self.t += 1
        return signs


def mean_over_all_sign_patterns(method, net, batch, signs_per_step):
    L = batch.num_steps
    total, count = None, 0
    for seq in itertools.product(itertools.product((-1.0, 1.0), repeat=signs_per_step), repeat=L):
        method.signs = Enumerated(seq)
        _, grads = method.gradient(net, batch, None)
        total = flat(grads) if total is None else total + flat(grads)
        count += 1
    return total / count


@pytest.mark.parametrize("name,cell,hidden", [("uoro", "rnn", 2), ("uoro", "lstm", 1), ("uoro", "gru", 2),
                                              ("uoro", "leaky", 2), ("kf_rtrl", "rnn", 2), ("kf_rtrl", "leaky", 2)])
def test_exactly_unbiased_over_every_sign_pattern(name, cell, hidden):
    method, net, batch = METHODS.get(name)(), network(cell, hidden), regression_batch(3, 2)
    ref = flat(reference_gradient(net, batch))
    signs_per_step = 2 * hidden if (name, cell) == ("uoro", "lstm") else (hidden if name == "uoro" else 2)
    mean = mean_over_all_sign_patterns(method, net, batch, signs_per_step)
    assert float((mean - ref).norm() / ref.norm()) < 1e-12
    # a single pattern is not the reference: the test could fail
    method.signs = Enumerated([(1.0,) * signs_per_step] * 3)
    assert rel_err(method.gradient(net, batch, None)[1], [ref]) > 1e-3


@pytest.mark.parametrize("name,cell", [("uoro", "rnn"), ("uoro", "gru"), ("kf_rtrl", "rnn"), ("kf_rtrl", "leaky")])
def test_rescaled_factors_have_equal_norms(name, cell):
    method, net, batch = METHODS.get(name)(), network(cell, 5), regression_batch(6, 3)
    method.trace = []
    method.gradient(net, batch, torch.Generator().manual_seed(1))
    assert len(method.trace) == 6
    for step in method.trace[1:]:   # the first step starts from zero factors
        for left, right in step:     # each term's two factors, per lane
            assert torch.allclose(left, right, rtol=1e-10, atol=0), (left, right)
            assert (left > 0).all()


def test_inverted_rescaling_breaks_the_norm_balance(monkeypatch):
    import harness.online as online
    method, net, batch = METHODS.get("uoro")(), network("rnn", 5), regression_batch(6, 3)
    monkeypatch.setattr(online, "balance", lambda a, b, eps: online.torch.sqrt((b + eps) / (a + eps)))
    method.trace = []
    method.gradient(net, batch, torch.Generator().manual_seed(1))
    assert not all(torch.allclose(left, right, rtol=1e-6) for step in method.trace[1:] for left, right in step)


@pytest.mark.parametrize("name", ["uoro", "kf_rtrl"])
def test_statistically_unbiased_at_a_larger_size(name):
    method, net, batch = METHODS.get(name)(), network("rnn", 8), regression_batch(10, 2)
    ref = flat(reference_gradient(net, batch))
    draws = torch.stack([flat(method.gradient(net, batch, torch.Generator().manual_seed(k))[1])
                         for k in range(150)])
    figs = stochastic_figures(draws, ref, n_boot=200, seed=0)
    assert figs["rel_variance"] > 0
    assert not figs["bias_detected"] and figs["rel_bias2"] <= 3 * figs["rel_bias2_se"], figs
    # the same test sees a bias of 0.2 |g*|
    biased = stochastic_figures(draws + 0.2 * ref, ref, n_boot=200, seed=0)
    assert biased["bias_detected"], biased


def test_kf_rtrl_variance_below_uoro():
    net, batch = network("rnn", 8), regression_batch(10, 2)
    ref = flat(reference_gradient(net, batch))
    v = {}
    for name in ("uoro", "kf_rtrl"):
        method = METHODS.get(name)()
        draws = torch.stack([flat(method.gradient(net, batch, torch.Generator().manual_seed(k))[1])
                             for k in range(60)])
        v[name] = stochastic_figures(draws, ref, n_boot=10)["rel_variance"]
    assert v["kf_rtrl"] < v["uoro"], v


def test_same_seed_same_estimate_bitwise():
    method, net, batch = METHODS.get("uoro")(), network("lstm", 3), regression_batch(5, 2)
    a = flat(method.gradient(net, batch, torch.Generator().manual_seed(7))[1])
    b = flat(method.gradient(net, batch, torch.Generator().manual_seed(7))[1])
    c = flat(method.gradient(net, batch, torch.Generator().manual_seed(8))[1])
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name,cell", [("rtrl", "rnn"), ("rtrl", "lstm"), ("rtrl", "gru"), ("rtrl", "leaky"),
                                       ("uoro", "rnn"), ("uoro", "lstm"), ("kf_rtrl", "rnn"), ("kf_rtrl", "leaky")])
def test_state_bytes_do_not_grow_with_sequence_length(name, cell):
    sizes = []
    for L in (3, 9):
        method, net, batch = METHODS.get(name)(), network(cell, 4), regression_batch(L, 2)
        method.gradient(net, batch, torch.Generator().manual_seed(0))
        sizes.append(method.state_bytes())
    assert sizes[0] == sizes[1] > 0
    if name == "rtrl":   # the influence matrix d state / d cell parameters, per lane, in float64
        cell_params = sum(p.numel() for p in net.cell.parameters())
        state = 4 * (2 if cell == "lstm" else 1)
        assert sizes[0] == 2 * state * cell_params * 8


@pytest.mark.parametrize("name", ["rtrl", "uoro", "kf_rtrl"])
def test_update_every_step_is_fully_online(name):
    method, net, batch = METHODS.get(name)(update_every=1), network("rnn", 3), regression_batch(4, 2)
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=1e-2), clip=None)
    before = [p.detach().clone() for p in net.parameters()]
    method.train_step(net, batch, updater, torch.Generator().manual_seed(0))
    assert updater.updates == 4
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))


def test_update_every_default_is_once_per_sequence_and_matches_gradient():
    method, net, batch = METHODS.get("rtrl")(), network("gru", 3), regression_batch(4, 2)
    _, grads = method.gradient(net, batch, None)
    expected = [p.detach() - 0.1 * g for p, g in zip(net.parameters(), grads)]
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=0.1), clip=None)
    method.train_step(net, batch, updater, None)
    assert updater.updates == 1
    assert all(torch.allclose(p, e, rtol=0, atol=1e-14) for p, e in zip(net.parameters(), expected))


def spec(cell="rnn", hidden=4, batch=2, dtype=torch.float32):
    return RunSpec(cell, INPUT, hidden, 2, 10, batch, dtype)


def test_rtrl_refuses_an_influence_matrix_that_does_not_fit():
    method = METHODS.get("rtrl")()
    method.check(spec(hidden=64, batch=4))
    with pytest.raises(ConfigError, match=r"GiB") as info:
        method.check(spec("lstm", hidden=512, batch=32))
    assert "\n" not in str(info.value) and "max_gib" in str(info.value)
    with pytest.raises(ConfigError, match="max_gib"):
        METHODS.get("rtrl")(max_gib=-1.0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_kf_rtrl_refuses_cells_without_the_factorisation(cell):
    with pytest.raises(ConfigError, match=f"kf_rtrl.*{cell}.*Kronecker.*rnn, leaky") as info:
        METHODS.get("kf_rtrl")().check(spec(cell))
    assert "\n" not in str(info.value) and "factorisation does not apply" not in str(info.value)


def test_bad_update_every_is_a_config_error():
    with pytest.raises(ConfigError, match="update_every"):
        METHODS.get("uoro")(update_every=0)


def test_command_line_refuses_before_training_and_reports_stochastic_columns(tmp_path, capsys):
    import pandas as pd
    from harness.cli import main
    tiny = ["--tasks", "adding", "--seq-len", "4", "--steps", "2", "--seeds", "1", "--hidden", "4", "--batch", "2",
            "--eval-batches", "1", "--grad-samples", "4", "--fidelity-points", "2", "--quiet", "--out", str(tmp_path)]
    assert main(["--methods", "kf_rtrl", "--cell", "gru", *tiny]) == 2
    assert main(["--methods", "rtrl[max_gib=0.000001]", "--cell", "rnn", *tiny]) == 2
    assert "GiB" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))
    assert main(["--methods", "rtrl,uoro,kf_rtrl,bptt", "--cell", "rnn", *tiny]) == 0
    table = pd.read_csv(tmp_path / "summary.csv").set_index("method")
    assert table.loc["rtrl", "grad_cosine"] == pytest.approx(1.0, abs=1e-6)
    for name in ("uoro", "kf_rtrl"):
        assert table.loc[name, ["grad_rel_bias", "grad_rel_bias_se", "grad_rel_variance"]].notna().all()
    for name in ("rtrl", "bptt"):
        assert table.loc[name, ["grad_rel_bias", "grad_rel_bias_se", "grad_rel_variance"]].isna().all()


@pytest.mark.parametrize("name,signs_per_lane,L", [("uoro", 1, 3), ("kf_rtrl", 2, 2)])
def test_exactly_unbiased_with_independent_signs_per_lane(name, signs_per_lane, L):
    # the shared-pattern enumeration above would not see one lane using another lane's signs
    method, net, batch = METHODS.get(name)(), network("rnn", 1), regression_batch(L, 2)
    ref = flat(reference_gradient(net, batch))
    total, count = None, 0
    for seq in itertools.product(itertools.product((-1.0, 1.0), repeat=2 * signs_per_lane), repeat=L):
        steps = iter(seq)
        method.signs = lambda rng, shape, like: torch.tensor(next(steps), dtype=like.dtype).view(shape)
        g = flat(method.gradient(net, batch, None)[1])
        total, count = (g if total is None else total + g), count + 1
    assert float((total / count - ref).norm() / ref.norm()) < 1e-12

"""dni: with the synthesiser's output held at zero it is tbptt with the same windows (gradients and
training trajectory); the injected synthetic gradient enters the window gradient as a gradient at
the boundary state; the synthesiser learns toward the bootstrapped target."""
import pytest
import torch

from harness.fidelity import flat, reference_gradient
from harness.method import RunSpec, Updater
from harness.models import detach, run
from harness.registry import METHODS
from conftest import tiny_batch

DNI, TBPTT = METHODS.get("dni"), METHODS.get("tbptt")


class Zero(torch.nn.Module):
    """A synthesiser whose output is zero, with no parameters to learn."""

    def forward(self, s):
        return torch.zeros_like(s)


def networks(cell, task, k, hidden=5, dtype=torch.float64, seed=0):
    spec = RunSpec(cell, task.input_size, hidden, task.output_size, task.num_steps, 3, dtype)
    torch.manual_seed(seed)
    net = DNI(k=k).build_network(spec).to(dtype)
    torch.manual_seed(seed)
    plain = TBPTT(k=k).build_network(spec).to(dtype)
    return net, plain


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("k", [1, 3, 5, 24])
def test_zero_synthesiser_gradient_is_tbptts(cell, k):
    task, batch = tiny_batch("copy", seq_len=4, batch=3)    # L = 24
    net, plain = networks(cell, task, k)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), net.parameters()))  # same draws
    loss, g = DNI(k=k).gradient(net, batch, None)            # M starts at zero
    loss_t, g_t = TBPTT(k=k).gradient(plain, batch, None)
    names = [n for n, _ in net.named_parameters()]
    assert loss == loss_t
    assert all(torch.equal(a, b) for a, b in zip(g, g_t))    # zip stops at tbptt's last parameter
    assert all((x == 0).all() for n, x in zip(names, g) if n.startswith("synthesiser."))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_synthesiser_trains_as_tbptt(cell, dtype):
    task, _ = tiny_batch("copy", seq_len=6)
    net, plain = networks(cell, task, k=4, hidden=6, dtype=dtype)
    net.synthesiser = Zero()
    trained = []
    for method, model in ((DNI(k=4), net), (TBPTT(k=4), plain)):
        updater = Updater(model, torch.optim.Adam(model.parameters(), lr=1e-2), clip=0.5)
        stream = task.stream(0, "train", 3)
        losses = [method.train_step(model, next(stream).to(dtype=dtype), updater, None) for _ in range(3)]
        assert updater.updates == 3 * 7                        # L = 26: windows of 4, the last of 2
        trained.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert trained[0][0] == trained[1][0]
    assert all(torch.equal(a, b) for a, b in zip(trained[0][1], trained[1][1]))


def test_injected_gradient_is_a_gradient_at_the_boundary():
    """With M fixed at some nonzero map, the window gradient equals the window loss's gradient plus
    delta^_e backpropagated from s_e, computed independently with autograd.grad's grad_outputs."""
    task, batch = tiny_batch("copy", seq_len=4, batch=3)
    net, _ = networks("lstm", task, k=6)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in net.synthesiser.parameters():
            p.normal_(0, 0.3)
    _, g = DNI(k=6).gradient(net, batch, None)
    params = [p for n, p in net.named_parameters() if not n.startswith("synthesiser.")]
    expected = [torch.zeros_like(p) for p in params]
    carry = net.init_carry(3)
    for b in range(0, 24, 6):
        outs, end = run(net, batch.x, carry, b, b + 6)
        delta = net.synthetic_gradient(detach(end)) if b + 6 < 24 else tuple(torch.zeros_like(c) for c in end)
        got = torch.autograd.grad([batch.loss(outs, b, b + 6), *end], params,      # M predicts per unit of loss
                                  grad_outputs=[None, *[0.1 * d.detach() / batch.normaliser for d in delta]])
        expected = [a + x for a, x in zip(expected, got)]
        carry = detach(end)
    assert flat(g[:len(params)]).sub(flat(expected)).norm() < 1e-12 * flat(expected).norm()
    assert flat(g).sub(flat(reference_gradient(net, batch))).norm() > 1e-3  # not BPTT: M is wrong here


def test_synthesiser_learns_the_bootstrapped_target():
    """One training step moves M's prediction at the boundary toward N d L_w / d s_b (adding, L = 12,
    k = 6: one boundary, and the last window has no synthetic gradient to bootstrap from): with the
    network held fixed, one small SGD step on M lowers M's loss there."""
    task, batch = tiny_batch("adding", seq_len=12, batch=3)
    net, _ = networks("lstm", task, k=6)
    method = DNI(k=6)

    def m_loss():
        with torch.no_grad():
            _, _, s = method.window(net, batch, net.init_carry(3), 0, 6)
        start = tuple(c.clone().requires_grad_() for c in s)
        _, objective, _ = method.window(net, batch, start, 6, 12)
        target = torch.cat(torch.autograd.grad(objective, start), -1) * batch.normaliser
        with torch.no_grad():
            return (net.predict(torch.cat(s, -1)) - target).pow(2).sum().item(), target, torch.cat(s, -1)

    before, target, s = m_loss()
    assert target.norm() > 0 and before == pytest.approx(target.norm().item() ** 2, rel=1e-12)  # M = 0 at init
    synth = list(net.synthesiser.parameters())
    # M's loss is quadratic with Hessian 2 [s 1]^T [s 1] / (N S^2) (per output unit): this step cannot overshoot
    lr = 0.25 * batch.normaliser.item() * s.shape[1] ** 2 / (s.pow(2).sum().item() + s.shape[0])
    updater = Updater(net, torch.optim.SGD(synth, lr=lr), clip=None)   # only M moves
    network_before = [p.detach().clone() for n, p in net.named_parameters() if not n.startswith("synthesiser.")]
    method.train_step(net, batch, updater, None)
    assert all(torch.equal(a, p) for a, (n, p) in zip(network_before, [(n, p) for n, p in net.named_parameters()
                                                                       if not n.startswith("synthesiser.")]))
    after, _, _ = m_loss()
    assert after < 0.9 * before


def test_synthesiser_is_part_of_the_model():
    spec = RunSpec("lstm", 3, 8, 4, 20, 2)
    net = DNI().build_network(spec)
    names = [n for n, _ in net.named_parameters()]
    assert "synthesiser.weight" in names and net.synthesiser.weight.shape == (16, 16)   # [h; c] -> [h; c]
    assert not any(n.startswith("synthesiser.") for n in net.recurrent_parameter_names())
    assert "cell.weight_hh" in net.recurrent_parameter_names()
    mlp = DNI(synthesiser="mlp").build_network(RunSpec("gru", 3, 8, 4, 20, 2))
    assert sum(p.numel() for p in mlp.synthesiser.parameters()) == 2 * (8 * 8 + 8)
    assert DNI().reference() == ("bptt", {})


@pytest.mark.parametrize("synthesiser", ["linear", "mlp"])
def test_synthesisers_gradient_is_the_bootstrapped_regressions(synthesiser):
    """What train_step hands the optimizer for M at each boundary b > 0 (lr 0: nothing moves) is the
    gradient of |M(s_b) - y_b|^2 / N with y_b = N d/ds_b (L_w + <0.1 M(s_e) / N, s_e>), written here
    with autograd.grad's grad_outputs: the middle boundary bootstraps from M's prediction at the next."""
    task, batch = tiny_batch("copy", seq_len=4, batch=3)    # L = 24, windows of 8: boundaries at 8, 16
    spec = RunSpec("lstm", task.input_size, 5, task.output_size, 24, 3, torch.float64)
    method = DNI(k=8, synthesiser=synthesiser)
    torch.manual_seed(0)
    net = method.build_network(spec).to(torch.float64)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in net.synthesiser.parameters():
            p.normal_(0, 0.3)
    synth, N, S = list(net.synthesiser.parameters()), batch.normaliser, 10
    expected, carry = [], net.init_carry(3)
    for b in range(0, 24, 8):
        start = tuple(c.detach().requires_grad_() for c in carry)
        outs, end = run(net, batch.x, start, b, b + 8)
        with torch.no_grad():
            seeds = (0.1 * net.synthesiser(torch.cat(end, -1)) / S / N).split([5, 5], -1) if b + 8 < 24 \
                else [torch.zeros_like(c) for c in end]
        if b > 0:
            y = torch.cat(torch.autograd.grad([batch.loss(outs, b, b + 8), *end], start, [None, *seeds]), -1) * N
            prediction = net.synthesiser(torch.cat(detach(start), -1)) / S
            expected.append(torch.autograd.grad((prediction - y).pow(2).sum() / N, synth))
        carry = detach(end)
    names, applied = [n for n, _ in net.named_parameters()], []

    class Capture(Updater):
        def apply(self, grads=None):
            applied.append([g for n, g in zip(names, grads) if n.startswith("synthesiser.")])
            super().apply(grads)
    method.train_step(net, batch, Capture(net, torch.optim.SGD(net.parameters(), lr=0.0), None), None)
    assert applied[0] == [None] * len(synth)                 # no target at the zero initial state
    assert len(applied) == 3 and all(e.norm() > 0 for e in expected[0])
    for want, got in zip(expected, applied[1:]):
        assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-15) for a, b in zip(want, got))

"""snap1, eprop and rflo against their definitions written with autograd (float64, relative error < 1e-10).

Each method is a truncation of RTRL; each is also the exact gradient of the same network with some
paths stop-gradiented, which autograd computes independently of the forward-mode code:
- SnAp-1: every path from unit j's state to unit k != j's cut (W_hh's off-diagonal entries of every
  gate block see h_{t-1} detached);
- e-prop: h_{t-1} detached where it enters the gates (gh = W_hh h_{t-1}.detach() + b_hh), the cell's own
  elementwise paths kept (the leak, the LSTM's c, the GRU's z h);
- RFLO: e-prop's leaky RNN with the loss pulled back to h_t through the feedback matrix B instead of W_out^T.
SnAp-1 is also checked against the paper's recursion written out, J_t = (I_t + D_t J_{t-1}) masked, with the
full D_t from forward-mode AD.
"""
import pytest
import torch
import torch.nn.functional as F

from harness.config import ConfigError
from harness.fidelity import flat, reference_gradient
from harness.jacobians import lane_jacobians, preactivations, step_function
from harness.method import RunSpec, Updater, diagonal_recurrent_weights
from harness.models import CELLS, build_network
from harness.registry import METHODS
from harness.task import Batch

INPUT, HIDDEN = 3, 4   # input size != hidden size


def regression_batch(L, B, out=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, B, INPUT, generator=g, dtype=torch.float64)
    y = torch.randn(L, B, out, generator=g, dtype=torch.float64)
    mask = torch.ones(L, B, dtype=torch.float64)
    mask[0, 0] = mask[L // 2, 1] = 0.0   # steps without loss in some lanes
    return Batch(x, y, mask, mask.clone(), "mse")


def classification_batch(L, B, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, B, INPUT, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (L, B), generator=g)
    mask = (torch.rand(L, B, generator=g) < 0.7).double()
    return Batch(x, y, mask, mask.clone(), "cross_entropy")


def network(cell, seed=0, out=2, tau=None):
    torch.manual_seed(seed)
    net = build_network(cell, INPUT, HIDDEN, out, tau=tau).double()
    with torch.no_grad():   # larger recurrent weights than the default: the dropped paths matter
        net.cell.weight_hh.mul_(3.0)
    return net


def rel_err(a, b):
    a, b = flat(a), flat(b)
    return float((a - b).norm() / b.norm())


def autograd_with_cuts(net, batch, gh_of, readout_of=None):
    """Gradient of the sequence loss through the network whose hidden-side pre-activation is
    gh_of(cell, h_prev) and whose output is readout_of(net, h) (default: the readout)."""
    cell, params = net.cell, list(net.parameters())
    step = step_function(cell)
    state = net.init_carry(batch.batch_size)
    outs = []
    for t in range(batch.num_steps):
        gi = F.linear(batch.x[t], cell.weight_ih, cell.bias_ih)
        state = step(gi, gh_of(cell, state[0]), state)
        outs.append(net.readout(state[0]) if readout_of is None else readout_of(net, state[0]))
    loss = batch.loss(torch.stack(outs))
    return [torch.zeros_like(p) if g is None else g
            for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]


def unit_mask(cell):
    H = cell.hidden_size
    gates = cell.weight_hh.shape[0] // H
    return torch.eye(H, dtype=cell.weight_hh.dtype).repeat(gates, 1)   # [G, H]: W_hh[jH+k, k]


def snap1_gh(cell, h):
    """Only the diagonal of each gate block of W_hh sees h_{t-1} with its history."""
    mask = unit_mask(cell)
    return (F.linear(h, cell.weight_hh * mask) + F.linear(h.detach(), cell.weight_hh * (1 - mask))
            + cell.bias_hh)


def eprop_gh(cell, h):
    return F.linear(h.detach(), cell.weight_hh, cell.bias_hh)


CELL_NAMES = list(CELLS)


# --- SnAp-1 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_batch", [regression_batch, classification_batch])
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_snap1_equals_autograd_with_off_diagonal_paths_cut(cell, make_batch):
    net = network(cell, out=3 if make_batch is classification_batch else 2)
    batch = make_batch(7, 3)
    _, grads = METHODS.get("snap1")().gradient(net, batch, None)
    expected = autograd_with_cuts(net, batch, snap1_gh)
    assert rel_err(grads, expected) < 1e-10
    assert rel_err(grads, reference_gradient(net, batch)) > 1e-3   # an approximation here: the test can fail


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_snap1_equals_rtrl_when_the_recurrent_jacobian_is_diagonal(cell):
    net, batch = network(cell), regression_batch(7, 3)
    diagonal_recurrent_weights(net)
    _, snap = METHODS.get("snap1")().gradient(net, batch, None)
    _, rtrl = METHODS.get("rtrl")().gradient(net, batch, None)
    assert rel_err(snap, rtrl) < 1e-10
    assert rel_err(snap, reference_gradient(net, batch)) < 1e-10


def snap_masked_rtrl(net, batch, pattern):
    """The paper's recursion literally, J_t = (I_t + D_t J_{t-1}) (.) M, with the full per-lane D_t and I_t
    from forward-mode AD (harness.jacobians.lane_jacobians, not the closed forms snap1 uses); pattern [S, G]."""
    cell, (B, H, I) = net.cell, (batch.batch_size, net.cell.hidden_size, net.cell.input_size)
    G, S = cell.weight_hh.shape[0], pattern.shape[0]
    J = torch.zeros(B, S, G, I + H + 2, dtype=torch.float64)
    grad = torch.zeros(G, I + H + 2, dtype=torch.float64)
    readout = [torch.zeros_like(p) for p in net.readout.parameters()]
    state = net.init_carry(B)
    for t in range(batch.num_steps):
        x, one = batch.x[t], batch.x.new_ones(B, 1)
        with torch.no_grad():
            gi, gh = preactivations(cell, x, state[0])
            Di, Dh, Ds = lane_jacobians(cell, gi, gh, state)
            D = torch.cat([Ds[..., :H] + Dh @ cell.weight_hh, Ds[..., H:]], -1)
            I_t = torch.cat([Di[..., None] * torch.cat([x, one], 1)[:, None, None],
                             Dh[..., None] * torch.cat([state[0], one], 1)[:, None, None]], -1)
            J = (I_t + torch.einsum("bsr,brgv->bsgv", D, J)) * pattern[:, :, None]
            state = cell(x, state)
        out = net.readout(state[0]).detach().requires_grad_()
        (d_out,) = torch.autograd.grad(batch.loss(out[None], t, t + 1), out)
        delta = torch.cat([d_out @ net.readout.weight.detach()] + [torch.zeros_like(c) for c in state[1:]], 1)
        grad += torch.einsum("bs,bsgv->gv", delta, J)
        readout[0] += d_out.T @ state[0]
        readout[1] += d_out.sum(0)
    by_name = {"cell.weight_ih": grad[:, :I], "cell.bias_ih": grad[:, I], "cell.weight_hh": grad[:, I + 1:I + 1 + H],
               "cell.bias_hh": grad[:, I + 1 + H], "readout.weight": readout[0], "readout.bias": readout[1]}
    return [by_name[n] for n, _ in net.named_parameters()]


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_snap1_is_the_papers_masked_recursion_on_the_units_block(cell):
    """snap1 = RTRL's recursion masked to the pattern "row g of unit k -> unit k's state (h_k; and c_k for
    the LSTM)". For the LSTM that is I_t's pattern plus the o rows' entries on c_k (the o gate reaches c_k
    only after a step); the stricter I_t pattern is another estimator, and not exact with diagonal W_hh."""
    net, batch = network(cell), regression_batch(7, 3)
    n = len(net.cell.state_names)
    pattern = unit_mask(net.cell).T.repeat(n, 1)                     # [S, G]: unit(s) == unit(g)
    _, grads = METHODS.get("snap1")().gradient(net, batch, None)
    assert rel_err(grads, snap_masked_rtrl(net, batch, pattern)) < 1e-10
    if cell == "lstm":
        strict = pattern.clone()
        strict[HIDDEN:, 3 * HIDDEN:] = 0                              # o rows on c: zero in I_t
        assert rel_err(grads, snap_masked_rtrl(net, batch, strict)) > 1e-4
        diagonal_recurrent_weights(net)
        assert rel_err(snap_masked_rtrl(net, batch, strict), reference_gradient(net, batch)) > 1e-4
        assert rel_err(snap_masked_rtrl(net, batch, pattern), reference_gradient(net, batch)) < 1e-10


# --- e-prop ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_batch", [regression_batch, classification_batch])
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_eprop_equals_autograd_with_the_recurrent_input_stop_gradiented(cell, make_batch):
    net = network(cell, out=3 if make_batch is classification_batch else 2)
    batch = make_batch(7, 3)
    _, grads = METHODS.get("eprop")().gradient(net, batch, None)
    assert rel_err(grads, autograd_with_cuts(net, batch, eprop_gh)) < 1e-10
    assert rel_err(grads, reference_gradient(net, batch)) > 1e-3


@pytest.mark.parametrize("cell", ["lstm", "leaky", "gru"])
def test_eprop_traces_carry_the_units_own_state(cell):
    """Cutting the unit's own state path too (the one-step gradient) gives another answer: the trace
    through c (LSTM), the leak or z h (GRU) is there."""
    net, batch = network(cell), regression_batch(7, 3)
    _, grads = METHODS.get("eprop")().gradient(net, batch, None)
    cell_, params = net.cell, list(net.parameters())
    step, state, outs = step_function(cell_), net.init_carry(3), []
    for t in range(batch.num_steps):
        gi = F.linear(batch.x[t], cell_.weight_ih, cell_.bias_ih)
        state = step(gi, eprop_gh(cell_, state[0]), tuple(s.detach() for s in state))
        outs.append(net.readout(state[0]))
    one_step = torch.autograd.grad(batch.loss(torch.stack(outs)), params)
    assert rel_err(grads, one_step) > 1e-3


def test_eprop_on_the_tanh_rnn_is_the_one_step_gradient():
    net, batch = network("rnn"), regression_batch(7, 3)
    _, grads = METHODS.get("eprop")().gradient(net, batch, None)
    cell, params = net.cell, list(net.parameters())
    h, outs = net.init_carry(3)[0], []
    for t in range(batch.num_steps):
        h = torch.tanh(F.linear(batch.x[t], cell.weight_ih, cell.bias_ih)
                       + F.linear(h.detach(), cell.weight_hh, cell.bias_hh))
        outs.append(net.readout(h))
    assert rel_err(grads, torch.autograd.grad(batch.loss(torch.stack(outs)), params)) < 1e-10


# --- RFLO ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [1.0, 3.0, 10.0])
@pytest.mark.parametrize("feedback", ["random", "readout"])
def test_rflo_equals_autograd_with_non_local_paths_cut_and_feedback_swapped(feedback, tau):
    net, batch = network("leaky", tau=tau), regression_batch(7, 3)
    method = METHODS.get("rflo")(feedback=feedback)
    _, grads = method.gradient(net, batch, None)
    Bt = method.feedback_matrix(net.readout)                    # B^T [out, H]

    def through_feedback(net, h):   # the readout's value; d y / d h = B^T instead of W_out
        return net.readout(h.detach()) + F.linear(h, Bt) - F.linear(h, Bt).detach()

    assert rel_err(grads, autograd_with_cuts(net, batch, eprop_gh, through_feedback)) < 1e-10
    assert rel_err(grads, reference_gradient(net, batch)) > 1e-3
    if feedback == "random":
        assert not torch.allclose(Bt, net.readout.weight)
        # the readout's own gradient stays exact
        ref = reference_gradient(net, batch)
        names = [n for n, _ in net.named_parameters()]
        for n, g, r in zip(names, grads, ref):
            if n.startswith("readout."):
                assert torch.allclose(g, r, rtol=1e-10, atol=1e-14)


def test_rflo_with_readout_feedback_is_eprop_on_the_leaky_rnn():
    net, batch = network("leaky"), regression_batch(7, 3)
    _, rflo = METHODS.get("rflo")(feedback="readout").gradient(net, batch, None)
    _, eprop = METHODS.get("eprop")().gradient(net, batch, None)
    assert rel_err(rflo, eprop) < 1e-12


def test_rflo_feedback_is_fixed_by_its_seed():
    net, batch = network("leaky"), regression_batch(5, 2)
    a = flat(METHODS.get("rflo")().gradient(net, batch, torch.Generator().manual_seed(1))[1])
    b = flat(METHODS.get("rflo")().gradient(net, batch, torch.Generator().manual_seed(2))[1])
    c = flat(METHODS.get("rflo")(feedback_seed=1).gradient(net, batch, None)[1])
    assert torch.equal(a, b) and not torch.equal(a, c)
    B32 = METHODS.get("rflo")().feedback_matrix(build_network("leaky", INPUT, HIDDEN, 2).readout)
    B64 = METHODS.get("rflo")().feedback_matrix(net.readout)
    assert B32.dtype == torch.float32 and torch.allclose(B32.double(), B64, rtol=1e-7, atol=0)
    assert B64.abs().max() <= 1 / HIDDEN ** 0.5


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_rflo_refuses_other_cells_with_its_own_reason(cell):
    spec = RunSpec(cell, INPUT, HIDDEN, 2, 10, 2)
    with pytest.raises(ConfigError, match=r"rflo.*'" + cell + r"'.*leaky tanh RNN.*supported: leaky") as info:
        METHODS.get("rflo")().check(spec)
    assert "\n" not in str(info.value) and "factorisation" not in str(info.value)



@pytest.mark.parametrize("seed", [-1, 2**64])
def test_rflo_refuses_a_feedback_seed_the_generator_cannot_take(seed):
    with pytest.raises(ConfigError, match=r"feedback_seed.*\[0, 2\*\*64\)"):
        METHODS.get("rflo")(feedback_seed=seed)

# --- shared ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,cell,copies", [
    ("snap1", "rnn", 1), ("snap1", "gru", 1), ("snap1", "leaky", 1), ("snap1", "lstm", 2),   # (h, c) per row
    ("eprop", "leaky", 1), ("eprop", "gru", 1), ("rflo", "leaky", 1),
    ("eprop", "lstm", 0.75), # eps on c for the i, f, g rows (e^t is formed from it when credited)
    ("eprop", "rnn", 0),     # nothing carried: the immediate gradient
])
def test_state_bytes_are_the_unit_influence_and_do_not_grow(name, cell, copies):
    sizes = []
    for L in (3, 9):
        method, net = METHODS.get(name)(), network(cell)
        method.gradient(net, regression_batch(L, 2), None)
        sizes.append(method.state_bytes())
    cell_params = sum(p.numel() for p in net.cell.parameters())
    assert sizes[0] == sizes[1] == int(copies * 2 * cell_params * 8)   # batch 2, float64


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("name,cell", [
    ("snap1", "lstm"), ("snap1", "gru"), ("eprop", "lstm"), ("eprop", "leaky"), ("eprop", "rnn"), ("rflo", "leaky"),
    ("rtrl", "gru"), ("uoro", "rnn"), ("kf_rtrl", "leaky"),   # the same base (harness/online.py)
])
def test_each_update_applies_its_windows_gradient(name, cell, every):
    """update_every=k: update j applies the gradient of window j only (what came before it was applied
    already), the last, partial, window included, with the sequence's normaliser (DESIGN.md). At lr=0
    (parameters fixed) the first j updates sum to the estimate over the sequence with the loss cut after
    window j (the same signs for uoro and kf_rtrl: one draw per step, with or without loss), rescaled
    from that batch's normaliser to the whole one's. A count of updates alone would pass a method that
    applied everything at the last update, or every earlier window again at each update."""
    net, batch = network(cell), regression_batch(7, 3)
    applied = []

    class Recording(Updater):
        def apply(self, grads=None):
            applied.append([g.clone() for g in grads])
            super().apply(grads)

    updater = Recording(net, torch.optim.SGD(net.parameters(), lr=0.0), clip=None)
    METHODS.get(name)(update_every=every).train_step(net, batch, updater, torch.Generator().manual_seed(0))
    assert len(applied) == -(-batch.num_steps // every)
    so_far = [torch.zeros_like(p) for p in net.parameters()]
    for j, window in enumerate(applied):
        so_far = [a + w for a, w in zip(so_far, window)]
        mask = batch.mask.clone()
        mask[(j + 1) * every:] = 0
        cut = Batch(batch.x, batch.y, mask, mask.clone(), batch.loss_kind)
        _, expected = METHODS.get(name)().gradient(net, cut, torch.Generator().manual_seed(0))
        scale = float(cut.normaliser / batch.normaliser)
        assert rel_err(so_far, [g * scale for g in expected]) < 1e-12, f"update {j + 1}"


@pytest.mark.parametrize("name,cell", [("snap1", "gru"), ("eprop", "lstm"), ("rflo", "leaky")])
def test_fully_online_updates_every_step(name, cell):
    method, net, batch = METHODS.get(name)(update_every=1), network(cell), regression_batch(4, 2)
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=1e-2), clip=None)
    method.train_step(net, batch, updater, torch.Generator().manual_seed(0))
    assert updater.updates == 4

"""SAB's compiled read (methods/_sab_native.cpp) against its PyTorch form (`choose_and_weigh` and the
torch branch of `_AttentionStep.backward`): whole networks' outputs and gradients in float64 to
rounding, in float32 no farther from float64 than the PyTorch read's (loosely: the exact gradient
amplifies rounding) and one read at a time to 1e-4; the MLP scorer's fallback to tanh for lanes
whose query is too large for its exp(c) exp(2q) form, and saturated keys; NaN propagation;
determinism; the floating-point mode restored after the scan; the PyTorch read where the library
is unavailable. And the run key: editing the C++ source changes SAB's source hash
(harness/store.py), not bptt's. (The compiled read against finite differences and plain autograd:
tests/test_sab.py, which runs it wherever it builds.)"""
import inspect
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from harness import store
from harness.models import make_cell
from harness.registry import METHODS
from methods import _sab_native
from methods._sab_network import SABNetwork, _AttentionStep, choose_and_weigh
from methods.sab import sab_forward

compiled = pytest.mark.skipif(_sab_native.library() is None, reason="SAB's compiled read is unavailable here")
QMAX = {torch.float32: 40.0, torch.float64: 300.0}   # |2q| beyond which a lane's MLP scan falls back to tanh


def network(scorer, variant="paper", threshold_grad=True, store="attended", k_att=1, dtype=torch.float64, H=6,
            seed=0):
    """Paper k_top=2, released k_top=3: either way 3 rows chosen per long read, 2 of them weighted."""
    torch.manual_seed(seed)
    net = SABNetwork(make_cell("lstm", 3, H), 4, 3 if variant == "released" else 2, k_att, variant, scorer, store,
                     threshold_grad)
    if scorer == "separable":   # its N(0, 0.01^2) init puts all scores within 1e-3 of each other
        with torch.no_grad():
            net.scorer.w.mul_(30)
    return net.to(dtype)


def long_reads(net, L):
    """How many reads of an L-step sequence find more than k_top memories."""
    size, count = (1 if net.released else 0), 0
    for t in range(1, L + 1):
        count += size > net.k_top
        size += t % net.k_att == 0
    return count


def forward_backward(net, x, k_trunc, native, monkeypatch):
    """Outputs, the gradients of a fixed weighting of them with respect to every parameter and x, and
    how many reads the compiled read served."""
    calls = []
    with monkeypatch.context() as mp:
        read = _sab_native.read
        mp.setattr(_sab_native, "read", lambda *a, **k: calls.append(1) or read(*a, **k))
        if not native:
            mp.setattr(_sab_native, "applies", lambda like: False)
        x = x.detach().clone().requires_grad_()
        out, (_, memory) = sab_forward(net, x, k_trunc, net.variant)
        assert memory.native == native
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        grads = torch.autograd.grad((out * weights).sum(), list(net.parameters()) + [x])
    return out.detach(), grads, len(calls)


def inputs(dtype, L=25, B=3, seed=1):
    return torch.randn(L, B, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def names(net):
    return [n for n, _ in net.named_parameters()] + ["x"]


# --- (a) whole networks: the compiled read is the PyTorch read, to rounding ----------------------
@compiled
@pytest.mark.parametrize("k_trunc,k_att", [(4, 1), (None, 2)])
@pytest.mark.parametrize("store", ["attended", "provisional"])
@pytest.mark.parametrize("threshold_grad", [True, False])
@pytest.mark.parametrize("variant", ["paper", "released"])
@pytest.mark.parametrize("scorer", ["mlp", "bilinear", "separable"])
def test_compiled_read_equals_the_pytorch_read_float64(scorer, variant, threshold_grad, store, k_trunc, k_att,
                                                       monkeypatch):
    net = network(scorer, variant, threshold_grad, store, k_att)
    x = inputs(torch.float64)
    out_c, g_c, calls_c = forward_backward(net, x, k_trunc, True, monkeypatch)
    out_t, g_t, calls_t = forward_backward(net, x, k_trunc, False, monkeypatch)
    assert calls_c == long_reads(net, x.shape[0]) > 10 and calls_t == 0   # each path really ran
    torch.testing.assert_close(out_c, out_t, rtol=1e-12, atol=1e-11 * float(out_t.abs().max()))
    # Relative to each tensor's largest entry: bilinear and separable differ by up to 3e-14 here. The
    # MLP's by up to 4e-11 (mlp-paper-False-attended-None-2): its exact gradient is ill-conditioned
    # (1 / spread per read, chained through stored states), and the two forms of its tanh round
    # differently; each lies as far from plain autograd through torch.tanh (tests/test_sab.py's
    # naive_forward) as from the other, the compiled read nearer.
    scale = 1e-9 if scorer == "mlp" else 1e-12
    for name, a, b in zip(names(net), g_c, g_t):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-12, atol=scale * float(b.abs().max()), msg=lambda m: f"{name}: {m}")


@compiled
@pytest.mark.parametrize("store", ["attended", "provisional"])
@pytest.mark.parametrize("threshold_grad", [True, False])
@pytest.mark.parametrize("variant", ["paper", "released"])
@pytest.mark.parametrize("scorer", ["mlp", "bilinear", "separable"])
def test_compiled_read_in_float32_is_as_accurate_as_the_pytorch_read(scorer, variant, threshold_grad, store,
                                                                     monkeypatch):
    """Both float32 reads against the float64 one, per tensor: the compiled read's error is at most
    ten times the PyTorch read's plus 2e-5 relative. Loose, because the exact gradient through SAB's
    reads amplifies float32 rounding (1 / spread per read, chained): over six seeds of these
    networks either read's gradients lay 5e-7 to 9e-2 from float64's (the PyTorch read's the
    farther in the worst case), and the compiled read's error reached 3.7 times (the PyTorch
    read's + 2e-5). The sharp float32 check is of one read at a time, below."""
    net = network(scorer, variant, threshold_grad, store, k_att=1)
    x = inputs(torch.float64)
    out_64, g_64, _ = forward_backward(net, x, 4, False, monkeypatch)
    net = net.float()
    out_c, g_c, calls = forward_backward(net, x.float(), 4, True, monkeypatch)
    out_t, g_t, _ = forward_backward(net, x.float(), 4, False, monkeypatch)
    assert calls == long_reads(net, x.shape[0])

    def err(a, b):
        return float((a.double() - b).norm() / b.norm())

    for name, c, t, ref in zip(["output"] + names(net), [out_c, *g_c], [out_t, *g_t], [out_64, *g_64]):
        assert err(c, ref) <= 10 * (err(t, ref) + 2e-5), (name, err(c, ref), err(t, ref))


# --- (b) the MLP scan's fallback for lanes with a large query ----------------------------------
def filled(net, rows, native, monkeypatch, B=3):
    """A memory holding `rows` (stored through the network, as its writes do), on the compiled read
    or not, and the Trace recording its reads."""
    with monkeypatch.context() as mp:
        if not native:
            mp.setattr(_sab_native, "applies", lambda like: False)
        with net.tracing() as trace:
            memory = net.init_carry(B)[1]
    for m in rows:
        net._write(memory, m)
    assert memory.native == native
    return memory, trace


def one_read(net, rows, h_hat, q, native, monkeypatch):
    """One read of a memory holding `rows` with query q (the scorer's query of h^, given; None for
    the bilinear scorer, which reads h^), through _AttentionStep: (output, gradients w.r.t. h^, q,
    the scorer's parameters and every row, the traced scores and weights, the memory)."""
    rows = [m.detach().clone().requires_grad_() for m in rows]
    h_hat = h_hat.detach().clone().requires_grad_()
    q = None if q is None else q.detach().clone().requires_grad_()
    memory, trace = filled(net, rows, native, monkeypatch, B=h_hat.shape[0])
    calls = []
    with monkeypatch.context() as mp:
        read = _sab_native.read
        mp.setattr(_sab_native, "read", lambda *a, **k: calls.append(1) or read(*a, **k))
        out = _AttentionStep.apply(net.scorer, net.sparsifier, memory, net.released, memory.handle, h_hat, q,
                                   *net.scorer.step_params())
    assert len(calls) == (1 if native else 0)
    out = out[0] if net.released else out
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    wrt = [h_hat, *([] if q is None else [q]), *net.scorer.parameters(), *rows]
    grads = torch.autograd.grad((out * weights).sum(), wrt, allow_unused=True)
    (a, w, _), = trace.reads
    return out.detach(), grads, a, w, memory


def crossing_rows(q, M, dtype, seed=2):
    """M rows [B, H] for key_proj = identity (key c = 2 m): random, and in every other row the first
    two components put c / 2 + q within +-1 of zero, so that even a huge query's components score
    differently row by row (tanh not saturated there)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for j in range(M):
        m = torch.randn(q.shape, generator=g, dtype=torch.float64).to(dtype)
        if j % 2:
            near = torch.empty(q.shape[0], 2, dtype=torch.float64).uniform_(-1, 1, generator=g)
            m[:, :2] = -q[:, :2] + near.to(dtype)
        rows.append(m)
    return rows


@compiled
@pytest.mark.parametrize("threshold_grad", [True, False])
@pytest.mark.parametrize("variant", ["paper", "released"])
@pytest.mark.parametrize("scorer", ["mlp", "bilinear", "separable"])
def test_one_read_in_float32_equals_the_pytorch_read(scorer, variant, threshold_grad, monkeypatch):
    """One long read (13 memories, 4 lanes, H = 8) in float32: scores, weights, output and the
    gradients to h^, the query, the scorer's parameters and every memory equal the PyTorch read's
    to 1e-4 of each tensor's largest entry (over 20 seeds of this test: at most 4e-5, where a lane's
    weighted scores lie close to its threshold; 5e-6 typically)."""
    B, H, M = 4, 8, 13
    net = network(scorer, variant, threshold_grad, dtype=torch.float32, H=H)
    g = torch.Generator().manual_seed(3)
    rows = [torch.randn(B, H, generator=g) for _ in range(M)]
    h_hat = torch.randn(B, H, generator=g)
    with torch.no_grad():
        q = net.scorer.query(h_hat)
    out_c, g_c, a_c, w_c, _ = one_read(net, rows, h_hat, q, True, monkeypatch)
    out_t, g_t, a_t, w_t, _ = one_read(net, rows, h_hat, q, False, monkeypatch)
    assert (w_t > 0).sum() == 2 * B   # two weighted rows per lane
    for name, x, y in [("a", a_c, a_t), ("w", w_c, w_t), ("out", out_c, out_t)] + list(zip(range(len(g_t)), g_c, g_t)):
        if y is None:
            assert x is None, name
            continue
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4 * float(y.abs().max()), msg=lambda m: f"{name}: {m}")


@compiled
@pytest.mark.parametrize("variant", ["paper", "released"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_lanes_with_a_large_query_fall_back_to_tanh_with_the_same_scores(dtype, variant, monkeypatch):
    """Lane 0's query has components with |2 q| beyond exp's range (exp(2 q) would overflow or
    vanish: the exp(c) exp(2 q) form cannot score them), lane 2's beyond the limit of that form but
    within exp's range (the compiled scan uses tanh for both), lane 1's just below the limit (the exp
    form with exp(2 q) near its largest). Half the rows cross zero in those components. Scores,
    chosen rows, weights, output and gradients equal the PyTorch read's."""
    B, H, M = 3, 6, 11
    net = network("mlp", variant, dtype=dtype, H=H)
    with torch.no_grad():
        net.scorer.key_proj.weight.copy_(torch.eye(H))
    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    limit, overflow = QMAX[dtype], math.log(torch.finfo(dtype).max)
    q[0, :2] = torch.tensor([0.6 * overflow, -0.6 * overflow])
    q[1, :2] = torch.tensor([-0.475 * limit, 0.45 * limit])
    q[2, :2] = torch.tensor([0.75 * limit, -0.8 * limit])
    q2 = (2 * q).abs().max(1).values
    assert q2[0] > overflow > q2[2] > limit >= q2[1] > 0.8 * limit
    h_hat = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    rows = crossing_rows(q, M, dtype)
    out_c, g_c, a_c, w_c, memory = one_read(net, rows, h_hat, q, True, monkeypatch)
    out_t, g_t, a_t, w_t, _ = one_read(net, rows, h_hat, q, False, monkeypatch)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    # the compiled read's scores, weights and output against choose_and_weigh on the same memory
    with torch.no_grad():
        idx, _, a, w, _, m, _, _ = choose_and_weigh(net.scorer, net.sparsifier, memory, q)
    assert (a[:, 0] - a[:, -1]).min() > 0.1 and (w > 0).sum() >= 2 * B   # a read that weighs rows
    torch.testing.assert_close(a_c, a, **tol)
    torch.testing.assert_close(w_c, w, **tol)
    torch.testing.assert_close(out_c, h_hat + torch.bmm(w.unsqueeze(1), m).squeeze(1), **tol)
    # the same rows chosen: exactly the chosen ones (the threshold's included) get gradient
    reached = torch.stack([(gr != 0).any(1) for gr in g_c[-M:]], 1)   # [B, M] (the release's memory 0 is its own)
    chosen = torch.zeros(B, memory.size, dtype=torch.bool).scatter_(1, idx, True)[:, memory.size - M:]
    assert torch.equal(reached, chosen)
    # and through _AttentionStep on a memory of each kind, backward included
    torch.testing.assert_close(a_c, a_t, **tol)
    torch.testing.assert_close(w_c, w_t, **tol)
    torch.testing.assert_close(out_c, out_t, **tol)
    for i, (x, y) in enumerate(zip(g_c, g_t)):
        if y is None:
            assert x is None
        else:
            atol = tol["atol"] * max(float(y.abs().max()), 1)
            torch.testing.assert_close(x, y, rtol=tol["rtol"], atol=atol, msg=lambda m: f"{i}: {m}")


# --- (c) NaN propagates ------------------------------------------------------------------------
@compiled
@pytest.mark.parametrize("scorer", ["mlp", "bilinear", "separable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_nan_memory_gives_a_nan_read_out_in_its_lane(scorer, dtype, monkeypatch):
    """A diverged memory (NaN value and so NaN key) is chosen (NaN ranks above every score, as in
    torch.topk) and its lane's read-out is NaN; the other lanes read as before. Likewise a NaN query."""
    B, H, M = 3, 6, 9
    net = network(scorer, dtype=dtype, H=H)
    g = torch.Generator().manual_seed(7)
    rows = [torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype) for _ in range(M)]
    h_hat = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    clean = net.attend(h_hat, filled(net, rows, True, monkeypatch)[0])[0]
    rows[4] = rows[4].clone()
    rows[4][1, 2] = float("nan")
    memory = filled(net, rows, True, monkeypatch)[0]
    calls = []
    with monkeypatch.context() as mp:
        read = _sab_native.read
        mp.setattr(_sab_native, "read", lambda *a, **k: calls.append(1) or read(*a, **k))
        h = net.attend(h_hat, memory)[0]
        assert h[1].isnan().all() and not h[[0, 2]].isnan().any()
        torch.testing.assert_close(h[[0, 2]], clean[[0, 2]], rtol=0, atol=0)
        h_nan = h_hat.clone()
        h_nan[2, 0] = float("nan")   # a diverged query
        h = net.attend(h_nan, filled(net, rows[:4] + rows[5:], True, monkeypatch)[0])[0]
        assert h[2].isnan().all() and not h[:2].isnan().any()
    assert len(calls) == 2


# --- (d) saturated keys ------------------------------------------------------------------------
@compiled
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mlp_with_saturated_keys_scores_as_the_pytorch_read(dtype, monkeypatch):
    """Keys c = 2 W_m m of +-200 (float64) or +-100 (float32) in two of six components: exp(c)
    overflows to inf or falls below the normal numbers in float32 (the scan flushes those to zero),
    which gives tanh's +-1; the other components keep the rows apart. Scores, weights, output and
    gradients equal the PyTorch read's."""
    B, H, M = 3, 6, 13
    c = {torch.float32: 100.0, torch.float64: 200.0}[dtype]
    net = network("mlp", dtype=dtype, H=H)
    with torch.no_grad():
        net.scorer.key_proj.weight.copy_(torch.eye(H))
    g = torch.Generator().manual_seed(11)
    rows = []
    for j in range(M):
        m = torch.randn(B, H, generator=g, dtype=torch.float64)
        m[:, :2] = torch.randint(0, 2, (B, 2), generator=g) * c - c / 2   # c / 2 = m: keys +-c
        rows.append(m.to(dtype))
    q = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    h_hat = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    out_c, g_c, a_c, w_c, _ = one_read(net, rows, h_hat, q, True, monkeypatch)
    out_t, g_t, a_t, w_t, _ = one_read(net, rows, h_hat, q, False, monkeypatch)
    extra_exp = torch.cat([2 * r[:, :2] for r in rows]).exp()
    if dtype == torch.float32:   # the cases the scan's form must survive
        assert extra_exp.isinf().any() and (extra_exp < torch.finfo(dtype).tiny).any()
    rtol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(a_c, a_t, rtol=rtol, atol=rtol * float(a_t.abs().max()))
    torch.testing.assert_close(w_c, w_t, rtol=10 * rtol, atol=10 * rtol)
    torch.testing.assert_close(out_c, out_t, rtol=rtol, atol=rtol * float(out_t.abs().max()))
    for x, y in zip(g_c, g_t):
        if y is not None:
            torch.testing.assert_close(x, y, rtol=10 * rtol, atol=10 * rtol * max(float(y.abs().max()), 1))


# --- (e) determinism ---------------------------------------------------------------------------
@compiled
@pytest.mark.parametrize("scorer", ["mlp", "bilinear", "separable"])
def test_compiled_read_is_deterministic(scorer, monkeypatch):
    net = network(scorer, k_att=1, dtype=torch.float32)
    x = inputs(torch.float32)
    (out1, g1, calls), (out2, g2, _) = (forward_backward(net, x, 4, True, monkeypatch) for _ in range(2))
    assert calls > 0
    assert torch.equal(out1, out2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@compiled
def test_the_compiled_read_restores_the_floating_point_mode(monkeypatch):
    """Its scan flushes subnormal numbers to zero; the process's arithmetic after it does not."""
    subnormal = [torch.tensor([1e-310], dtype=torch.float64), torch.tensor([1e-40], dtype=torch.float32)]
    assert subnormal[0].item() * 0.5 > 0 and all((t * 0.5).item() > 0 for t in subnormal)
    _, _, calls = forward_backward(network("mlp", k_att=1), inputs(torch.float64, L=8), None, True, monkeypatch)
    assert calls > 0
    assert subnormal[0].item() * 0.5 > 0 and all((t * 0.5).item() > 0 for t in subnormal)


# --- (f) without the library -------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["paper", "released"])
def test_without_the_library_sab_runs_the_pytorch_read(variant, monkeypatch):
    """A build that fails: one RuntimeWarning naming why, memories not compiled, and SAB's forward
    and backward by the PyTorch read (which tests/test_sab.py checks against autograd)."""
    def fail():
        raise OSError("no C++ compiler (g++) on PATH")

    monkeypatch.setattr(_sab_native, "_lib", None)
    monkeypatch.setattr(_sab_native, "_why_not", None)
    monkeypatch.setattr(_sab_native, "_build", fail)
    monkeypatch.delenv("CREDITBENCH_SAB_NATIVE", raising=False)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert _sab_native.library() is None
    assert _sab_native.library() is None   # once known, asked again without another warning or build
    monkeypatch.setattr(_sab_native, "read", lambda *a, **k: pytest.fail("the compiled read was called"))
    net = network("mlp", variant)
    x = inputs(torch.float64, L=12).requires_grad_()
    out, (_, memory) = sab_forward(net, x, 4, variant)
    assert not memory.native and memory.size > net.k_top + 1
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()) + [x])
    assert out.isfinite().all() and all(g.isfinite().all() and g.abs().max() > 0 for g in grads)


def test_the_switch_turns_the_compiled_read_off(monkeypatch):
    monkeypatch.setattr(_sab_native, "_lib", None)
    monkeypatch.setattr(_sab_native, "_why_not", None)
    monkeypatch.setenv("CREDITBENCH_SAB_NATIVE", "0")
    monkeypatch.setattr(_sab_native, "_build", lambda: pytest.fail("built although switched off"))
    assert _sab_native.library() is None and not _sab_native.applies(torch.zeros(2, 3))


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ here")
@pytest.mark.skipif(os.environ.get("CREDITBENCH_SAB_NATIVE") == "0", reason="switched off (CREDITBENCH_SAB_NATIVE=0)")
def test_the_library_builds_where_there_is_a_compiler():
    """Fails loudly, rather than every SAB run quietly falling back to the slower read."""
    assert _sab_native.library() is not None, _sab_native._why_not
    assert _sab_native.applies(torch.zeros(2, 3)) and _sab_native.applies(torch.zeros(2, 3, dtype=torch.float64))
    assert not _sab_native.applies(torch.zeros(2, 3, dtype=torch.float16))


# --- the run key covers the C++ source ----------------------------------------------------------
def test_editing_the_cpp_source_changes_sabs_source_hash_not_bptts(monkeypatch):
    sab, bptt = METHODS.get("sab"), METHODS.get("bptt")
    cpp = _sab_native.SOURCE.resolve()
    assert cpp.is_file() and cpp.suffix == ".cpp"
    before = {m: store.source_hash(m) for m in (sab, bptt)}
    found = []
    for base in sab.__mro__:
        if base.__module__.split(".")[0] not in ("harness", "builtins"):
            store._code_files(Path(inspect.getfile(base)).resolve(), base.__module__, found)
    assert cpp in found and found.index(cpp) == found.index(cpp.with_suffix(".py")) + 1   # beside its loader
    read_bytes = Path.read_bytes

    def edited(self):
        data = read_bytes(self)
        return data + b"\n// an edit\n" if Path(self).resolve() == cpp else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert store.source_hash(sab) != before[sab]
    assert store.source_hash(bptt) == before[bptt]
    found = []
    store._code_files(Path(inspect.getfile(bptt)).resolve(), bptt.__module__, found)
    assert not any(p.suffix in (".c", ".cc", ".cpp", ".h", ".hpp") for p in found)


@compiled
@pytest.mark.parametrize("scorer", ["mlp", "bilinear"])
def test_a_backward_before_the_memory_grows_then_another_gives_the_pytorch_reads_gradients(scorer, monkeypatch):
    """A loss on the first steps backpropagated with the graph kept, the memory grown past the
    gradient store's rows, then a second backward: the store grows with it (the compiled backward
    once wrote past its end)."""
    grads = []
    for native in (True, False):
        with monkeypatch.context() as mp:
            if not native:
                mp.setattr(_sab_native, "applies", lambda like: False)
            net, x = network(scorer), inputs(torch.float64, L=40)
            carry, outs = net.init_carry(x.shape[1]), []
            assert carry[1].native == native
            for t in range(x.shape[0]):
                out, carry = net.step(x[t], carry)
                outs.append(out)
                if t == 5:
                    torch.stack(outs).sum().backward(retain_graph=True)
            torch.stack(outs).pow(2).sum().backward()
            assert carry[1].store.grad.shape[0] == carry[1].store.rows > 24
            grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))


def test_a_spare_buffer_is_handed_out_again_only_when_nothing_else_shares_it():
    from methods._sab_network import _Spare
    spare, like = _Spare(smallest=0), torch.zeros(1)
    t = torch.ones(4, 8)
    view = t[1]
    spare.give(t)
    assert spare.empty(like, 4, 8) is not t   # a view of it is alive: someone may still read it
    del view
    assert spare.empty(like, 4, 9) is not t   # another shape
    assert spare.empty(like, 4, 8) is t
    spare.give(t)
    assert torch.equal(spare.zeros(like, 4, 8), torch.zeros(4, 8))


def test_the_spare_buffers_keep_within_their_byte_limit():
    from methods._sab_network import _Spare
    spare = _Spare(max_bytes=3 * 4 * 32, smallest=0)
    for _ in range(5):
        spare.give(torch.zeros(32))
    assert len(spare.free) == 3
    spare.give(torch.zeros(1000))   # larger than the limit: not kept
    assert all(t.numel() == 32 for t in spare.free)


@pytest.mark.parametrize("scorer", ["mlp", "bilinear"])
def test_sequences_on_reused_buffers_compute_what_fresh_buffers_do(scorer, monkeypatch):
    """Buffers and gradient stores of a finished sequence, reused by the next, hold nothing of it:
    the same sequence on fresh and on reused buffers gives bitwise the same outputs and gradients."""
    from methods import _sab_network

    class Counting(_sab_network._Spare):
        reused = 0

        def empty(self, like, *shape):
            kept = list(self.free)
            t = super().empty(like, *shape)
            Counting.reused += any(t is k for k in kept)
            return t

    net, x = network(scorer, dtype=torch.float32, H=128, k_att=1), inputs(torch.float32, L=40, B=8)
    monkeypatch.setattr(_sab_network, "SPARE", Counting(smallest=0))
    first = forward_backward(net, x, 4, True, monkeypatch)
    assert Counting.reused == 0
    # another sequence whose backward reaches only a parameter of the reads themselves (the mlp's v):
    # its `_Link`s never run, so its gradient store is left holding gradients when it becomes spare
    out, carry = sab_forward(net, inputs(torch.float32, L=40, B=8, seed=5), 4, net.variant)
    torch.autograd.grad(out.pow(2).sum(), [net.scorer.v] if scorer == "mlp" else [net.readout.weight])
    del out, carry
    again = forward_backward(net, x, 4, True, monkeypatch)
    assert Counting.reused >= 3   # values, keys (and the mlp's extra) and the gradient store, at least
    torch.testing.assert_close(again[0], first[0], rtol=0, atol=0)
    for a, b in zip(again[1], first[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@compiled
@pytest.mark.parametrize("scorer", ["mlp", "bilinear", "separable"])
def test_a_non_contiguous_provisional_state_reads_as_a_contiguous_one(scorer, monkeypatch):
    """The compiled backward reads the saved query as a dense array: h^ given transposed (a cell
    returning a view) must give the PyTorch read's gradients."""
    results = []
    for native in (True, False):
        with monkeypatch.context() as mp:
            if not native:
                mp.setattr(_sab_native, "applies", lambda like: False)
            net = network(scorer, H=6)
            g = torch.Generator().manual_seed(3)
            rows = [torch.randn(3, 6, dtype=torch.float64, generator=g).requires_grad_() for _ in range(5)]
            memory, _ = filled(net, rows, native, mp)
            base = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
            h_hat = base.T   # [B, H], not contiguous
            assert not h_hat.is_contiguous()
            out, _ = net.attend(h_hat, memory)
            weights = torch.arange(out.numel(), dtype=out.dtype).view_as(out)
            grads = torch.autograd.grad((out * weights).sum(), [base, *rows, *net.parameters()], allow_unused=True)
            results.append((out.detach(), [torch.zeros(()) if g is None else g for g in grads]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

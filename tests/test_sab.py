"""Sparse Attentive Backtracking: against full BPTT through its own network, finite differences,
an independent plain-autograd implementation (every memory scored, explicit detaches), the
released variant's behaviours one by one, validation, and the growth of saved bytes."""
import json

import pytest
import torch
import torch.nn.functional as F

from harness import cli
from harness.config import ConfigError
from harness.fidelity import flat, reference_gradient
from harness.meters import SavedBytesMeter
from harness.method import Updater
from harness.registry import METHODS
from conftest import build, tiny_batch

SAB, SAB_BPTT = METHODS.get("sab"), METHODS.get("sab_bptt")


def rel(a, b):
    fa, fb = flat(a), flat(b)
    return ((fa - fb).norm() / fb.norm()).item()


def make(cell="lstm", seq_len=4, batch=3, hidden=4, seed=0, task="copy", **params):
    method = SAB(**params)
    t, b = tiny_batch(task, seq_len=seq_len, batch=batch)
    net, _ = build(method, cell, t, batch, seed=seed, hidden=hidden)
    return method, net, b


def naive_forward(net, x, k_trunc, variant, k_top, k_att, block_memory_grad=False, hidden=None, store="attended",
                  threshold_grad=True):
    """SAB written the direct way, independently of methods/: every memory scored with gradient
    at every step from a stacked copy, weights from a full sort, explicit detaches."""
    cell, B, L = net.cell, x.shape[1], x.shape[0]
    state = cell.init_state(B)
    released = variant.startswith("released")
    mems = [state[0]] if released else []
    if released:
        cut_before = [t for t in range(L) if (t + 1) % k_trunc == 0]
    else:
        cut_before = [t for t in range(L) if t > 0 and t % k_trunc == 0]
    outs = []
    for t in range(L):
        if t in cut_before:
            state = tuple(s.detach() for s in state)
        state = cell(x[t], state)
        h_hat = state[0]
        r = torch.zeros_like(h_hat)
        if mems:
            Mt = torch.stack([m.detach() if block_memory_grad else m for m in mems])   # [M, B, H]
            H = h_hat.shape[1]
            sc = net.scorer
            if hasattr(sc, "w"):   # separable, the release's
                pair = torch.cat([h_hat.expand(len(mems), B, H), Mt], -1)
                a = torch.tanh(pair) @ sc.w
            elif hasattr(sc, "v"):   # mlp
                a = torch.tanh(Mt @ sc.key_proj.weight.T + h_hat @ sc.query_proj.weight.T + sc.query_proj.bias) @ sc.v
            else:   # bilinear
                a = (Mt * (h_hat @ sc.query_proj.weight.T + sc.query_proj.bias)).sum(-1)
            if len(mems) <= k_top:
                w = a if released else torch.softmax(a, 0)
            elif variant == "released_literal":   # the release's `attn_s - delta.repeat(1, T)` under PyTorch 0.1.12
                s = torch.sort(a, dim=0, descending=True).values
                delta = (s[k_top - 1] if threshold_grad else s[k_top - 1].detach()) + 1e-7   # [B]
                M = a.shape[0]
                flat_scores = a.T.reshape(-1)                                  # attn_s [B, M], flattened
                repeated = delta.reshape(1, B).repeat(1, M).reshape(-1)        # [1, B*M], flattened
                w = F.relu(flat_scores - repeated).reshape(B, M).T              # elementwise on equal sizes
                w = w / (w.sum(0) + 1e-7)
            else:
                s = torch.sort(a, dim=0, descending=True).values
                if not threshold_grad:
                    s = s.detach()
                if variant == "released":
                    w = F.relu(a - (s[k_top - 1] + 1e-7))
                    w = w / (w.sum(0) + 1e-7)
                else:
                    w = F.relu(a - s[k_top])
                    w = w / w.sum(0)
            r = (w.unsqueeze(-1) * Mt).sum(0)
        h = h_hat + r
        state = (h,) + tuple(state[1:])
        if hidden is not None:
            hidden.append(h)
        if (t + 1) % k_att == 0:
            mems.append(h_hat if store == "provisional" else h)
        outs.append(net.readout(torch.cat([h, r], -1) if released else h))
    return torch.stack(outs)


def naive_gradient(net, batch, **kw):
    loss = batch.loss(naive_forward(net, batch.x, **kw))
    return [torch.zeros_like(p) if g is None else g
            for p, g in zip(net.parameters(), torch.autograd.grad(loss, list(net.parameters()), allow_unused=True))]


# --- (a) no effective truncation is full BPTT through the SAB network --------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("variant", ["paper", "released", "released_literal"])
@pytest.mark.parametrize("extra", [0, 1000])
def test_untruncated_sab_is_bptt_through_its_network(cell, variant, extra):
    # L = 24; the release cuts before step k_trunc - 1, so only k_trunc > L means no cut there
    k_trunc = (24 if variant == "paper" else 25) + extra
    method, net, batch = make(cell, k_trunc=k_trunc, k_top=2, k_att=1, variant=variant)
    _, g = method.gradient(net, batch, None)
    ref = reference_gradient(net, batch)
    assert rel(g, ref) < 1e-10
    _, g_bptt = SAB_BPTT(k_top=2, k_att=1, variant=variant).gradient(net, batch, None)
    assert rel(g_bptt, ref) < 1e-10
    # and the reference is the network's, not a plain recurrent one: the scorer gets gradient
    assert flat([dict(zip([n for n, _ in net.named_parameters()], ref))[n]
                 for n, _ in net.scorer.named_parameters(prefix="scorer")]).norm() > 0


@pytest.mark.parametrize("variant,scorer", [("paper", None), ("paper", "bilinear"), ("released", None),
                                            ("released_literal", None)])
def test_gradcheck_tiny_sab_network(variant, scorer):
    # seed 3: every step's top scores are at least 0.01 apart (at other seeds this tiny GRU ties
    # memories to within the release's 1e-7, its sparsifier's kink, where finite differences fail)
    method, net, batch = make("gru", seq_len=1, batch=2, hidden=2, seed=3, k_trunc=100, k_top=2, k_att=2,
                              variant=variant, scorer=scorer)
    names = [n for n, _ in net.named_parameters()]
    if variant.startswith("released"):   # its N(0, 0.01^2) scorer puts scores 1e-4 apart, too close for finite differences
        with torch.no_grad():
            net.scorer.w.mul_(100)
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]

    def loss(*ps):
        out, _ = torch.func.functional_call(net, dict(zip(names, ps)), (batch.x,))
        return batch.loss(out)

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


# --- (b) truncated: against the independent implementation, path by path -----------------------
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("variant,scorer", [("paper", None), ("paper", "bilinear"), ("paper", "separable"),
                                            ("released", None), ("released", "mlp"), ("released_literal", None)])
@pytest.mark.parametrize("k_trunc,k_top,k_att", [(1, 1, 1), (2, 2, 1), (3, 2, 2), (5, 3, 3), (4, 8, 1)])
def test_truncated_gradient_equals_plain_autograd(cell, variant, scorer, k_trunc, k_top, k_att):
    method, net, batch = make(cell, seq_len=3, k_trunc=k_trunc, k_top=k_top, k_att=k_att, variant=variant,
                              scorer=scorer)
    loss, g = method.gradient(net, batch, None)
    kw = dict(k_trunc=k_trunc, variant=variant, k_top=k_top, k_att=k_att)
    with torch.no_grad():
        out = naive_forward(net, batch.x, **kw)
    assert abs(loss - batch.loss(out).item()) < 1e-12
    assert rel(g, naive_gradient(net, batch, **kw)) < 1e-10


@pytest.mark.parametrize("variant,scorer", [("paper", None), ("paper", "bilinear"), ("released", None),
                                            ("released_literal", None)])
def test_without_threshold_gradient_equals_plain_autograd_with_the_threshold_detached(variant, scorer):
    kw = dict(k_trunc=3, k_top=2, k_att=1, variant=variant)
    method, net, batch = make("lstm", seq_len=3, scorer=scorer, threshold_grad=False, **kw)
    _, g = method.gradient(net, batch, None)
    assert rel(g, naive_gradient(net, batch, threshold_grad=False, **kw)) < 1e-10
    assert rel(g, naive_gradient(net, batch, **kw)) > 1e-6   # the threshold's gradient is not negligible


@pytest.mark.parametrize("variant", ["paper", "released"])
@pytest.mark.parametrize("threshold_grad", [True, False])
@pytest.mark.parametrize("scorer", [None, "bilinear"])
def test_memories_backtracked_per_read(variant, threshold_grad, scorer):
    """One read backtracks into the k_top weighted memories (k_top - 1 in the release) and, through
    its score, the threshold memory (weight 0) unless threshold_grad=False."""
    method, net, batch = make("lstm", seq_len=4, k_top=3, k_att=1, k_trunc=100, variant=variant, scorer=scorer,
                              threshold_grad=threshold_grad)
    B, H = batch.batch_size, 4
    memory = net.init_carry(B)[1]
    g = torch.Generator().manual_seed(1)
    stored = [torch.randn(B, H, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(8)]
    for m in stored:
        net._write(memory, m)
    h = torch.randn(B, H, generator=g, dtype=torch.float64)
    out = net.attend(h, memory)[0]
    grads = torch.autograd.grad(out.sum(), stored, allow_unused=True)
    reached = torch.stack([torch.zeros(B) if gr is None else (gr != 0).any(1).double() for gr in grads]).sum(0)
    weighted = (net.weights(h, memory) != 0).sum(0).double()
    assert (weighted == (3 if variant == "paper" else 2)).all()
    assert torch.equal(reached, weighted + (1 if threshold_grad else 0))


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_credit_beyond_the_window_arrives_only_through_attended_memories(variant):
    from methods.sab import cuts
    k = dict(k_trunc=3, k_top=2, k_att=2, variant=variant)
    method, net, batch = make("lstm", seq_len=2, **k)   # L = 22
    L = batch.num_steps
    carry, hs, outs = net.init_carry(batch.batch_size), [], []
    for t in range(L):
        if t in cuts(L, 3, variant):
            carry = net.truncate(carry)
        out, carry = net.step(batch.x[t], carry)
        hs.append(net.hidden(carry))
        outs.append(out)
    last = L - 1
    window_start = max(c for c in cuts(L, 3, variant) if c <= last)
    early = list(range(window_start - 1))   # hidden states more than one window back
    g_eff = torch.autograd.grad(batch.loss(torch.stack(outs)[last:], last, L), [hs[s] for s in early])
    kw = dict(k_trunc=3, variant=variant, k_top=2, k_att=2)
    for block in (False, True):
        hn = []
        out = naive_forward(net, batch.x, block_memory_grad=block, hidden=hn, **kw)
        g = torch.autograd.grad(batch.loss(out[last:], last, L), [hn[s] for s in early], allow_unused=True)
        g = [torch.zeros_like(hn[0]) if x is None else x for x in g]
        if block:   # no attention path: nothing reaches before the last window
            assert all(torch.equal(x, torch.zeros_like(x)) for x in g)
        else:       # every path through attended memories, the same as the efficient implementation
            assert rel(g_eff, g) < 1e-10
            assert sum(float(x.norm()) for x in g_eff) > 0


# --- (c) the released variant's behaviours, and the default's deviations ------------------------
def filled(variant, k_top=3, M_steps=12, cell="lstm", scorer=None):
    method, net, batch = make(cell, seq_len=4, k_top=k_top, k_att=1, k_trunc=100, variant=variant, scorer=scorer)
    carry = net.init_carry(batch.batch_size)
    for t in range(M_steps):
        _, carry = net.step(batch.x[t], carry)
    return net, carry[1], batch


@pytest.mark.parametrize("variant,expected_nonzero", [("paper", 3), ("released", 2)])
def test_sparsifier_keeps_k_top_weights_paper_and_k_top_minus_one_released(variant, expected_nonzero):
    net, memory, batch = filled(variant, k_top=3)
    assert memory.size > 3
    h = torch.randn(batch.batch_size, 4, dtype=torch.float64)
    w = net.weights(h, memory)
    assert ((w != 0).sum(0) == expected_nonzero).all()
    assert (w >= 0).all()
    if variant == "paper":
        assert torch.allclose(w.sum(0), torch.ones(batch.batch_size, dtype=w.dtype), atol=1e-12, rtol=0)
    else:   # the release normalises by sum + 1e-7: short of 1 by 1e-7 / (sum + 1e-7)
        excess = w.sum(0) * 1e-7 / (1 - w.sum(0))
        assert ((w.sum(0) < 1) & (w.sum(0) > 0.99)).all() and (excess > 0).all()


@pytest.mark.parametrize("scorer", [None, "bilinear"])
def test_paper_weights_depend_on_the_query_released_do_not(scorer):
    for variant in ("paper", "released"):
        net, memory, batch = filled(variant, scorer=scorer if variant == "paper" else None)
        g = torch.Generator().manual_seed(3)
        h1, h2 = (torch.randn(batch.batch_size, 4, generator=g, dtype=torch.float64) for _ in range(2))
        w1, w2 = net.weights(h1, memory), net.weights(h2, memory)
        change = (w1 - w2).abs().max().item()
        if variant == "paper":
            assert change > 1e-3
        else:   # equal up to the rounding of (q + key_j) - (q + key_k)
            assert change < 1e-9 and (w1 != 0).any()


def test_short_memory_softmax_paper_raw_scores_released():
    for variant in ("paper", "released"):
        net, memory, batch = filled(variant, k_top=5, M_steps=3)
        assert memory.size <= 5
        h = torch.randn(batch.batch_size, 4, dtype=torch.float64)
        w = net.weights(h, memory)
        Mt = memory.rows()
        if variant == "paper":
            assert memory.size == 3 and (w > 0).all()
            assert torch.allclose(w.sum(0), torch.ones(batch.batch_size, dtype=w.dtype))
        else:
            assert memory.size == 4   # the zero initial state, then three stored states
            raw = torch.tanh(torch.cat([h.expand_as(Mt), Mt], -1)) @ net.scorer.w
            assert torch.allclose(w, raw, atol=1e-14)
            assert not torch.allclose(w.sum(0), torch.ones(batch.batch_size, dtype=w.dtype))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("variant", ["paper", "released"])
def test_store_provisional_stores_h_hat(cell, variant):
    kw = dict(k_trunc=3, k_top=2, k_att=2, variant=variant)
    method, net, batch = make(cell, seq_len=3, store="provisional", **kw)
    _, g = method.gradient(net, batch, None)
    assert rel(g, naive_gradient(net, batch, store="provisional", **kw)) < 1e-10
    assert rel(g, naive_gradient(net, batch, **kw)) > 1e-6
    carry = net.init_carry(batch.batch_size)
    for t in range(6):
        carry = net.step(batch.x[t], carry)[1]
        if t == 5:   # the state stored after step 6 is the provisional one: |h^| <= 1 for an LSTM
            h_hat = net.cell(batch.x[t], prev[0])[0]
            assert torch.allclose(carry[1].rows()[-1], h_hat, atol=1e-14, rtol=0)
            if variant == "paper":   # (the release's zero first memory often wins, and reads zero)
                assert not torch.allclose(carry[1].rows()[-1], net.hidden(carry))
        prev = carry


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_memory_holds_attended_states_every_k_att_steps(variant):
    method, net, batch = make("lstm", seq_len=4, k_top=2, k_att=3, k_trunc=5, variant=variant)
    carry, hs = net.init_carry(batch.batch_size), []
    for t in range(batch.num_steps):   # L = 24
        _, carry = net.step(batch.x[t], carry)
        hs.append(net.hidden(carry))
    memory = carry[1]
    stored = [hs[t] for t in range(2, 24, 3)]   # after steps 3, 6, ..., 24 (1-indexed)
    if variant == "released":
        assert torch.equal(memory.rows()[0], torch.zeros_like(hs[0]))
        stored = [torch.zeros_like(hs[0])] + stored
    assert memory.size == len(stored)
    for j, h in enumerate(stored):
        assert torch.equal(memory.rows()[j], h)
    assert hs[-1].requires_grad   # stored with their graphs, not detached


def test_released_literal_thresholds_memories_against_other_rows_scores():
    """variant=released_literal: memory t of row b is thresholded against row (b T + t) mod B's k-th
    score plus 1e-7, so a row may read more than k_top - 1 memories, or none; variant=released reads
    exactly k_top - 1 in every row."""
    from methods._sab_network import LiteralReleaseSparsifier, Sparsifier
    g = torch.Generator().manual_seed(0)
    B, M, k = 16, 37, 5
    # the release's scores are a per-row query term plus per-memory keys: rows sit at different levels
    a = 3 * torch.randn(B, 1, generator=g, dtype=torch.float64) + torch.randn(B, M, generator=g, dtype=torch.float64)
    w, _ = LiteralReleaseSparsifier(k).forward(a, True)
    delta = a.sort(1, descending=True).values[:, k - 1] + 1e-7
    thr = torch.tensor([[delta[(b * M + t) % B] for t in range(M)] for b in range(B)], dtype=torch.float64)
    expected = (a - thr).clamp_min(0)
    assert torch.allclose(w, expected / (expected.sum(1, keepdim=True) + 1e-7), rtol=0, atol=1e-15)
    counts = (w > 0).sum(1)
    assert counts.max() > 2 * k and counts.min() == 0   # rows thresholded against lower rows read many, others none
    released, _ = Sparsifier(k, True).forward(a.sort(1, descending=True).values[:, :k], True)
    assert ((released > 0).sum(1) == k - 1).all()
    _, net, _ = make(hidden=4, variant="released_literal")
    assert type(net.scorer).__name__ == "SeparableScorer" and net.readout.in_features == 8


def test_window_boundaries():
    from methods.sab import cuts
    assert cuts(10, 3, "paper") == {3, 6, 9}
    assert cuts(10, 3, "released") == {2, 5, 8}
    assert cuts(4, 1, "released") == {0, 1, 2, 3} and cuts(4, 1, "paper") == {1, 2, 3}
    assert cuts(24, 24, "released") == {23} and cuts(24, 24, "paper") == set()
    # the boundaries matter: the released gradient differs from the one with the paper's cuts
    method, net, batch = make("lstm", seq_len=3, k_trunc=3, k_top=2, k_att=2, variant="released")
    _, g = method.gradient(net, batch, None)
    kw = dict(k_trunc=3, k_top=2, k_att=2, variant="released")
    assert rel(g, naive_gradient(net, batch, **kw)) < 1e-10
    from methods import sab as sab_module
    original = sab_module.cuts
    try:
        sab_module.cuts = lambda L, k, v: original(L, k, "paper")
        _, g_paper_cuts = method.gradient(net, batch, None)
    finally:
        sab_module.cuts = original
    assert rel(g_paper_cuts, g) > 1e-6


def test_readout_sees_h_paper_and_h_r_released():
    for variant, width in (("paper", 4), ("released", 8)):
        _, net, _ = make(hidden=4, variant=variant)
        assert net.readout.in_features == width


def test_default_scorer_is_the_papers_mlp_and_the_releases_separable():
    """The paper scores with an MLP over [h^; m] (its Figure 1); bilinear is an option, not the default."""
    assert SAB.hyperparameters["scorer"].default is None
    for variant, scorer, params in (("paper", "MLPScorer", {"key_proj.weight", "query_proj.weight",
                                                           "query_proj.bias", "v"}),
                                    ("released", "SeparableScorer", {"w"})):
        _, net, _ = make(hidden=4, variant=variant)
        assert type(net.scorer).__name__ == scorer
        assert {n for n, _ in net.scorer.named_parameters()} == params
    _, net, _ = make(hidden=4, scorer="bilinear")
    assert type(net.scorer).__name__ == "BilinearScorer"
    assert SAB().label == "sab" and SAB(scorer="mlp").label == "sab[scorer=mlp]"


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_one_update_per_sequence(variant):
    method, net, batch = make("lstm", k_trunc=2, k_top=2, k_att=1, variant=variant)
    updater = Updater(net, torch.optim.SGD(net.parameters(), lr=0.1), clip=None)
    before = [p.detach().clone() for p in net.parameters()]
    _, g = method.gradient(net, batch, None)
    method.train_step(net, batch, updater, None)
    assert updater.updates == 1
    for b, p, gi in zip(before, net.parameters(), g):
        assert torch.allclose(p, b - 0.1 * gi, atol=1e-14)


# --- (d) validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("params,words", [
    ({"k_trunc": 0}, ["k_trunc=0", "positive integer"]),
    ({"k_top": -1}, ["k_top=-1", "positive integer"]),
    ({"k_att": "two"}, ["k_att='two'", "positive integer"]),
    ({"k_top": 2.5}, ["k_top=2.5"]),
    ({"variant": "releasd"}, ["releasd", "did you mean 'released'"]),
    ({"ktop": 3}, ["ktop", "did you mean 'k_top'"]),
    ({"scorer": "bilinier"}, ["bilinier", "did you mean 'bilinear'"]),
    ({"threshold_grad": "maybe"}, ["threshold_grad='maybe'", "true or false"]),
])
def test_bad_hyperparameters(params, words):
    with pytest.raises(ConfigError) as err:
        SAB(**params)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_sab_bptt_has_no_truncation_option_and_cli_refuses_bad_values(tmp_path, capsys):
    with pytest.raises(ConfigError, match="k_trunc"):
        SAB_BPTT(k_trunc=5)
    code = cli.main(["--methods", "sab[k_top=0]", "--tasks", "copy", "--steps", "1", "--out", str(tmp_path)])
    assert code == 2 and "k_top=0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- (e) cost: no per-step concatenation of the whole memory -----------------------------------
def saved_bytes(T, k_att=1):
    method, net, batch = make("lstm", seq_len=T, batch=2, hidden=8, task="adding", k_trunc=5, k_top=3, k_att=k_att)
    meter = SavedBytesMeter(list(net.parameters()) + batch.tensors())
    with meter.measure():
        method.train_step(net, batch, Updater(net, torch.optim.SGD(net.parameters(), lr=0.0), None), None)
    return meter.peak


def test_saved_bytes_grow_linearly_not_quadratically():
    a, b = saved_bytes(40), saved_bytes(160)
    # 4x the steps: linear gives ~4x; holding every step's view of the whole memory gives ~16x
    assert 3.0 < b / a < 5.0, (a, b)


@pytest.mark.parametrize("scorer", [None, "bilinear"])
def test_saved_bytes_count_the_chosen_rows_on_top_of_bptts(scorer):
    """The closed-form backward saves what it needs through save_for_backward, so the meter sees it:
    at least BPTT's bytes on the same cell (every window's graph stays alive) plus the values of the
    k_top + 1 chosen memories of every long-memory read."""
    T, B, H, k_top = 40, 2, 8, 3
    method, net, batch = make("lstm", seq_len=T, batch=B, hidden=H, task="adding", k_trunc=5, k_top=k_top, k_att=1,
                              scorer=scorer)
    meter = SavedBytesMeter(list(net.parameters()) + batch.tensors())
    with meter.measure():
        method.train_step(net, batch, Updater(net, torch.optim.SGD(net.parameters(), lr=0.0), None), None)
    bptt = METHODS.get("bptt")()
    bnet, _ = build(bptt, "lstm", tiny_batch("adding", seq_len=T, batch=B)[0], B, hidden=H)
    bmeter = SavedBytesMeter(list(bnet.parameters()) + batch.tensors())
    with bmeter.measure():
        bptt.train_step(bnet, batch, Updater(bnet, torch.optim.SGD(bnet.parameters(), lr=0.0), None), None)
    long_reads = batch.num_steps - (k_top + 1)   # the memory holds more than k_top entries from step k_top + 2
    rows = long_reads * B * (k_top + 1) * H * 8
    assert meter.peak >= bmeter.peak + rows, (meter.peak, bmeter.peak, rows)


# --- generalisation to longer test sequences, end to end ----------------------------------------
def test_eval_on_longer_sequences_through_the_cli(tmp_path):
    code = cli.main(["--methods", "sab[k_trunc=3,k_top=2,k_att=2],sab_bptt[k_top=2]", "--tasks", "copy", "--seq-len", "3",
                     "--eval-seq-len", "9", "--hidden", "4", "--batch", "2", "--steps", "2", "--seeds", "1",
                     "--eval-batches", "1", "--fidelity-points", "2", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    assert all(r["num_steps"] == 23 and r["eval_num_steps"] == 29 for r in records)
    assert all(r["memory"]["state_bytes"] > 0 for r in records)
    table = (tmp_path / "summary.md").read_text()
    assert table.count("3→9") == 2


def test_memory_and_graph_are_freed_without_the_cycle_collector():
    import gc
    import weakref
    method, net, batch = make("lstm", seq_len=10, k_trunc=3, k_top=2, k_att=1)
    enabled = gc.isenabled()
    gc.disable()
    try:
        for backward in (True, False):
            out, carry = method.forward(net, batch)
            loss = batch.loss(out)
            refs = [weakref.ref(carry[1]), weakref.ref(carry[1].store), weakref.ref(carry[1].handle)]
            del out, carry
            if backward:
                loss.backward()
            del loss
            assert all(r() is None for r in refs)
    finally:
        if enabled:
            gc.enable()


# --- diagnostics recorded at every evaluation --------------------------------------------------
@pytest.mark.parametrize("variant,scorer", [("paper", None), ("paper", "bilinear"), ("released", None)])
def test_diagnostics_match_an_independent_pass(variant, scorer):
    method, net, batch = make("lstm", seq_len=5, batch=3, k_trunc=3, k_top=2, k_att=1, variant=variant, scorer=scorer)
    before = [p.detach().clone() for p in net.parameters()]
    d = method.diagnostics(net, batch)
    assert all(torch.equal(b, p) for b, p in zip(before, net.parameters())) and net._trace is None
    entropies, counts = [], []
    carry = net.init_carry(batch.batch_size)
    for t in range(batch.num_steps):
        h_hat = net.cell(batch.x[t], carry[0])[0]
        if carry[1].size:
            w = net.weights(h_hat, carry[1]).T   # [B, |M|]
            counts.append((w != 0).sum(1).double())
            pos = w.clamp_min(0)
            p = pos[pos.sum(1) > 0] / pos[pos.sum(1) > 0].sum(1, keepdim=True)   # (lanes reading nothing: skipped)
            entropies.append(-(p * p.clamp_min(1e-300).log()).sum(1))
        carry = net.step(batch.x[t], carry)[1]
    norms = carry[1].rows().norm(dim=2)
    assert d["exact_grad_norm"] == pytest.approx(float(flat(reference_gradient(net, batch)).norm()), rel=1e-12)
    assert d["attention_entropy"] == pytest.approx(float(torch.cat(entropies).mean()), rel=1e-9)
    assert d["memories_read"] == pytest.approx(float(torch.cat(counts).mean()), rel=1e-12)
    assert d["memory_norm_mean"] == pytest.approx(float(norms.mean()), rel=1e-12)
    assert d["memory_norm_max"] == pytest.approx(float(norms.max()), rel=1e-12)
    assert d["score_spread_median"] > 0


def naive_scores(net, h_hat, memory):
    """Every memory's score [B, |M|], written from the scorers' formulas."""
    Mt, sc = memory.rows(), net.scorer   # [M, B, H]
    if hasattr(sc, "w"):   # separable, the release's
        return (torch.tanh(torch.cat([h_hat.expand_as(Mt), Mt], -1)) @ sc.w).T
    return (torch.tanh(Mt @ sc.key_proj.weight.T + h_hat @ sc.query_proj.weight.T + sc.query_proj.bias) @ sc.v).T


@pytest.mark.parametrize("variant", ["paper", "released", "released_literal"])
def test_diagnostics_spread_is_over_the_threshold_each_memory_is_compared_with(variant):
    """score_spread_median is the median, over long-memory reads and lanes, of s = sum_j relu(a_j - the
    score memory j is thresholded against): the row's (k_top+1)-th (paper) or k_top-th (released) score,
    and for released_literal the k_top-th score of row (b |M| + j) mod B (the flattened subtraction)."""
    k_top = 2
    method, net, batch = make("lstm", seq_len=5, batch=3, k_trunc=3, k_top=k_top, k_att=1, variant=variant)
    if variant.startswith("released"):   # scores far enough apart that the rows' thresholds differ clearly
        with torch.no_grad():
            net.scorer.w.mul_(100)
    d = method.diagnostics(net, batch)
    B, spreads = batch.batch_size, []
    with torch.no_grad():
        carry = net.init_carry(B)
        for t in range(batch.num_steps):
            h_hat, memory = net.cell(batch.x[t], carry[0])[0], carry[1]
            if memory.size > k_top:
                a = naive_scores(net, h_hat, memory)                     # [B, M]
                kth = a.sort(1, descending=True).values[:, k_top if variant == "paper" else k_top - 1]
                M = a.shape[1]
                source = (torch.arange(B)[:, None] * M + torch.arange(M)) % B if variant == "released_literal" \
                    else torch.arange(B)[:, None].expand(B, M)
                spreads.append((a - kth[source]).clamp_min(0).sum(1))
            carry = net.step(batch.x[t], carry)[1]
    expected = float(torch.cat(spreads).median())
    assert expected > 0
    assert d["score_spread_median"] == pytest.approx(expected, rel=1e-9)


def test_diagnostics_are_recorded_in_every_curve_point(tmp_path):
    code = cli.main(["--methods", "sab[k_trunc=3,k_top=2,k_att=2]", "--tasks", "copy", "--seq-len", "3",
                     "--hidden", "4", "--batch", "2", "--steps", "4", "--seeds", "1", "--eval-every", "2",
                     "--eval-batches", "1", "--fidelity-points", "2", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    # (the sweep may add sab's fidelity reference, sab_bptt, as a run of its own: it records them too)
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    (record,) = [r for r in records if r["config"]["method"] == "sab"]
    assert len(record["curve"]) >= 2
    for point in record["curve"]:
        assert {"exact_grad_norm", "attention_entropy", "memories_read", "memory_norm_mean",
                "memory_norm_max"} <= set(point["diagnostics"])

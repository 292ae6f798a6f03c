"""The network of Sparse Attentive Backtracking (Ke et al. 2018): a recurrent cell whose hidden
state attends, at every step, to a sparse set of its own past hidden states.

Per step t (1-indexed), with memory M = (m_1, ..., m_|M|):
    h^_t, c_t = cell(x_t, (h_{t-1}, c_{t-1}))           provisional state
    a_j = score(h^_t, m_j)                               one score per memory
    w   = sparsify(a)                                    k_top nonzero weights
    r_t = sum_j w_j m_j                                  read-out of the memory
    h_t = h^_t + r_t                                     the state carried on (c_t unchanged)
    y_t = readout(h_t)            ([h_t; r_t] in the released variant)
    if t % k_att == 0: append h_t to M                   (not detached; h^_t with store=provisional)

How the memory keeps every skip gradient and stays cheap. A scorer splits a_j into a key (the part
that depends on m_j alone, computed with gradient once per write) and a query (the part that
depends on h^_t). Each stored m_j and its key are kept by reference in an autograd chain (`_Link`),
and copied into no-grad buffers [capacity, B, width] (values, keys). One autograd node per step
(`_AttentionStep`) scores every memory from those buffers, chooses the top rows, gathers them,
sparsifies and adds the weighted sum to h^_t; its backward is in closed form and adds each chosen
row's gradient (value and key) into a per-sequence accumulator, from which `_Link` hands memory j
its gradient. Autograd's dependency order runs `_Link` j only after every read that could have
chosen memory j. So nothing is concatenated per step, nothing loops over memories in Python, and the
buffers autograd never saves are the only ones written in place. On the CPU the long reads run
compiled (methods/_sab_native.py: one call forward, one backward, where PyTorch takes some thirty
small operations); elsewhere, and for the short reads, in PyTorch operations (`choose_and_weigh`);
the two agree to rounding (tests/test_sab_native.py), except that exactly tied scores go to the
earlier memory in the compiled read. Tensors the backward needs go through `ctx.save_for_backward`
(the saved-bytes meter counts them); the nodes hold only the accumulator, which holds no tensor of
the graph: no reference cycle (tested). The closed forms
are checked against plain autograd in float64 and by finite differences (tests/test_sab.py).
"""
from __future__ import annotations

import collections
import contextlib
import math
import weakref

import torch
from torch import nn
from torch.nn import functional as F

from harness.models import Cell, Network, detach

from . import _sab_native

EPS_PAPER = 1e-12     # default floor of the normaliser: the weights sum to exactly 1 unless all k_top tie with the threshold
EPS_RELEASED = 1e-7   # the release adds this to the threshold and to the normaliser


class _Spare:
    """The large no-grad buffers of finished sequences (memory buffers outgrown or dropped, gradient
    stores whose graph is gone), kept for the next sequence on the CPU: a fresh buffer of 16 MB costs
    a page fault per 4 KB on first touch (here 6 ms to 50 ms per training step at T = 1000, a tenth of
    a SAB step, most of it outside the process's CPU time), a reused one none. A buffer is handed out
    again only if nothing else shares its storage (no view of it outlived its owner); the most
    recent are kept, up to `max_bytes` in all."""

    def __init__(self, max_bytes: int = 256 << 20, smallest: int = 1 << 20):
        self.free: collections.deque[torch.Tensor] = collections.deque()
        self.max_bytes, self.smallest = max_bytes, smallest   # smaller ones: malloc's free lists serve

    # (a finalizer may give while `empty` or `give` runs, from a collection an allocation set off:
    # both read a copy of `free`)
    def give(self, *buffers: torch.Tensor | None) -> None:
        for t in buffers:
            if t is not None and t.device.type == "cpu" and self.smallest <= _bytes(t) <= self.max_bytes:
                self.free.append(t)
        while sum(map(_bytes, list(self.free))) > self.max_bytes:
            self.free.popleft()

    def give_held(self, held: dict) -> None:
        self.give(*held.values())

    def empty(self, like: torch.Tensor, *shape: int) -> torch.Tensor:
        for t in list(self.free):
            if t.shape == shape and t.dtype == like.dtype and t.device == like.device and _unshared(t):
                self.free = collections.deque(k for k in self.free if k is not t)
                return t
        return like.new_empty(shape)

    def zeros(self, like: torch.Tensor, *shape: int) -> torch.Tensor:
        return self.empty(like, *shape).zero_()


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _unshared(t: torch.Tensor) -> bool:
    """Whether t alone holds its storage (1 for t, 1 for the storage object asked)."""
    try:
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= 2
    except AttributeError:   # a PyTorch without this internal: never reuse
        return False


SPARE = _Spare()


class _GradStore:
    """Gradient accumulated for each memory row [value; key] during one backward pass, laid out like
    the memory's buffer: row j * B + b for memory j of lane b. Held by the autograd nodes; it
    references no tensor of the graph, so no reference cycle keeps the graph alive."""

    def __init__(self, batch_size: int):
        self.B, self.rows, self.grad = batch_size, 0, None
        self.keys = None   # the memory's cached keys (the compiled bilinear backward reads W^T m_j there)
        self.held = {}     # its large buffers, spare once the store (and so its graph) is gone
        weakref.finalize(self, SPARE.give_held, self.held)

    def buffer(self, like: torch.Tensor, width: int) -> torch.Tensor:
        """The accumulator [rows, width], zeros when first asked for; grown (zeros added) when the
        memory has grown since (a backward pass before the sequence's end, then another)."""
        if self.grad is None:
            self.grad = SPARE.zeros(like, self.rows, width)
        elif self.grad.shape[0] < self.rows:
            self.grad = torch.cat([self.grad, self.grad.new_zeros(self.rows - self.grad.shape[0], width)])
        self.held["grad"] = self.grad
        return self.grad

    def accumulate(self, flat: torch.Tensor, g: torch.Tensor) -> None:
        """Add g [B * n, width] into rows flat [B * n]."""
        self.buffer(g, g.shape[1]).index_add_(0, flat, g)

    def take(self, j: int) -> torch.Tensor | None:
        """Memory j's gradient [B, width], reset for another backward pass through the same graph."""
        if self.grad is None:
            return None
        rows = self.grad[j * self.B:(j + 1) * self.B]
        g = rows.clone()
        rows.zero_()
        return g


class _Link(torch.autograd.Function):
    """handle_j = Link(handle_{j-1}, m_j, key_j): a scalar token that depends on every stored tensor,
    so that autograd runs its backward (which hands m_j and key_j their accumulated gradients) only
    after every read that could have chosen memory j. The handles carry no gradient, only that order."""

    @staticmethod
    def forward(ctx, store, j, handle, m, key):
        ctx.set_materialize_grads(False)
        ctx.store, ctx.j, ctx.H = store, j, m.shape[1]
        ctx.key_shape = None if key is None else key.shape
        return handle.new_zeros(())

    @staticmethod
    def backward(ctx, g_handle):
        g = ctx.store.take(ctx.j)
        if g is None:
            return None, None, None, None, None
        g_key = None if ctx.key_shape is None else g[:, ctx.H:].reshape(ctx.key_shape)
        return None, None, None, g[:, :ctx.H], g_key


class Trace:
    """What a diagnostic pass records (SABNetwork.tracing): per read the chosen rows' scores, weights
    and thresholds, per write the norms of the stored states. Plain tensors without gradient only, so that
    holding it keeps no graph alive."""

    def __init__(self):
        self.reads, self.stored_norms = [], []

    def read(self, a: torch.Tensor, w: torch.Tensor, threshold: torch.Tensor | None) -> None:
        """`threshold`: the score each of a's entries is thresholded against (None: a short-memory read)."""
        kept = None if threshold is None else threshold.detach().clone()
        self.reads.append((a.detach().clone(), w.detach().clone(), kept))

    def write(self, m: torch.Tensor) -> None:
        self.stored_norms.append(m.detach().norm(dim=1))

    def figures(self) -> dict[str, float]:
        """Attention entropy (of the positive weights, normalised, per read and lane), memories with
        nonzero weight per read, the spread s = sum_j relu(a_j - the score memory j is thresholded
        against) of the long-memory reads (median), and the stored states' norms (mean, max), each over
        every read and lane."""
        out, entropies, counts, spreads = {}, [], [], []
        for a, w, threshold in self.reads:
            pos = w.clamp_min(0)
            total = pos.sum(1)
            counts.append((w != 0).sum(1).double())
            p = pos[total > 0] / total[total > 0, None]
            entropies.append(-(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1).double())
            if threshold is not None:
                spreads.append((a - threshold).clamp_min(0).sum(1).double())
        if counts:
            out["attention_entropy"] = float(torch.cat(entropies).mean())
            out["memories_read"] = float(torch.cat(counts).mean())
        if spreads:
            out["score_spread_median"] = float(torch.cat(spreads).median())
        if self.stored_norms:
            norms = torch.cat(self.stored_norms).double()
            out["memory_norm_mean"], out["memory_norm_max"] = float(norms.mean()), float(norms.max())
        return out


class Memory:
    """The stored hidden states of one batch of sequences, in no-grad buffers [capacity, B, width]
    (row j * B + b of a buffer's flat view is memory j of lane b): their values, their cached keys
    and, for the compiled read, the scorer's extra cache (each buffer apart, rows padded to 64 bytes
    there, so that the compiled scan streams through the one it reads); a scratch buffer for scorers
    that need one; the gradient store, with rows [d/d value; d/d key]; the autograd chain of the
    stored tensors; and the step count. Part of the carry and appended to in place: a carry is used
    once, in order (as `run` does)."""

    def __init__(self, like: torch.Tensor, key_width: int, trace: Trace | None = None, native_extra: int = 0):
        self.size, self.t, self.trace = 0, 0, trace
        self.native = _sab_native.applies(like)   # long reads by the compiled read
        self.B, self.H, self.key_width = like.shape[0], like.shape[1], key_width
        self.width = self.H + key_width   # of the gradient store's rows
        self.extra = native_extra if self.native else 0
        per_line = 64 // like.element_size() if self.native else 1
        # (a one-float extra cache, the bilinear b . m, is packed: B of them share a line)
        self.widths = [w if w == 1 else -(-w // per_line) * per_line for w in (self.H, key_width, self.extra)]
        self.bufs = [None, None, None]   # values, keys, extra
        self.scratch = None
        self.lanes = torch.arange(self.B, device=like.device)[:, None]
        self.store = _GradStore(self.B)
        self.handle = like.new_zeros(())
        self.key_weight = None   # a scorer's per-sequence key projection, if it has one
        # values and the extra cache are spare once the memory is gone (no backward reads them; the
        # keys go with the gradient store)
        weakref.finalize(self, lambda bufs: SPARE.give(bufs[0], bufs[2]), self.bufs)

    def write(self, m: torch.Tensor, key: torch.Tensor | None, cached_key: torch.Tensor | None,
              extra: torch.Tensor | None = None) -> None:
        """Store m and its key (with gradient); `cached_key` [B, key width] is what the scan reads,
        `extra` what the compiled read reads besides (stored only where it serves this memory)."""
        with torch.no_grad():
            if self.bufs[0] is None or self.size == self.bufs[0].shape[0]:   # full: double the capacity
                capacity = max(8, 2 * self.size)
                for i, width in enumerate(self.widths):
                    if width:
                        grown = SPARE.empty(m, capacity, self.B, width)
                        if self.size:
                            grown[:self.size] = self.bufs[i][:self.size]
                        SPARE.give(self.bufs[i])
                        self.bufs[i] = grown
                self.store.rows = capacity * self.B
                self.store.keys = self.store.held["keys"] = self.bufs[1]
            for buf, new in zip(self.bufs, (m, cached_key, extra)):
                if new is not None and buf is not None:
                    buf[self.size, :, :new.shape[1]] = new
        self.handle = _Link.apply(self.store, self.size, self.handle, m, key)
        self.size += 1
        if self.trace is not None:
            self.trace.write(m)

    @property
    def values(self) -> torch.Tensor:
        """[B, |M|, H], no gradient."""
        return self.rows().transpose(0, 1)

    @property
    def keys(self) -> torch.Tensor:
        """The cached keys [B, |M|, key width], no gradient."""
        return self.bufs[1][:self.size, :, :self.key_width].transpose(0, 1)

    def flat(self, idx: torch.Tensor) -> torch.Tensor:
        """Memories idx [B, n] of each lane -> their rows [B * n] in the buffers and the gradient store."""
        return torch.add(self.lanes, idx, alpha=self.B).view(-1)

    def gather(self, flat: torch.Tensor) -> torch.Tensor:
        """The values of rows flat [B * n] -> [B * n, H], no gradient."""
        return self.bufs[0].view(-1, self.widths[0])[:, :self.H].index_select(0, flat)

    def gather_workspace(self, idx: torch.Tensor, width: int) -> torch.Tensor:
        """Rows idx [B, n] of the workspace last used as [B, |M|, width] -> [B * n, width]."""
        return self.scratch.view(-1, width).index_select(0, torch.add(idx, self.lanes, alpha=self.size).view(-1))

    def workspace(self, *shape: int) -> torch.Tensor:
        """A scratch tensor of this shape, reused from step to step (no gradient, never saved)."""
        n = math.prod(shape)
        if self.scratch is None or self.scratch.numel() < n:
            self.scratch = self.bufs[0].new_empty(max(n, 2 * (0 if self.scratch is None else self.scratch.numel())))
        return self.scratch[:n].view(shape)

    def rows(self) -> torch.Tensor:
        """The stored values [|M|, B, H] (no gradient), for tests and plots."""
        return self.bufs[0][:self.size, :, :self.H]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.bufs, self.scratch) if t is not None)


# --- scorers --------------------------------------------------------------------------------------
# A scorer splits a_j = score(h^, m_j) into `key(m)`, made with gradient once per write (`cache`: its
# no-grad form [B, key_width] that the scan reads), and `query(h^)`, made with gradient each step
# (None: the scorer reads h^ itself). Without gradient, `scan` scores every memory (to choose rows)
# and returns what the backward needs; `chosen` adds what it needs of the chosen rows. `backward` is
# the closed-form gradient of the chosen rows' scores: it returns d/d query (or h^) and d/d the
# scorer's per-step tensors, and writes d/d keys into the rows' gradient g_rows[:, :, H:].

# `native_kind` names the compiled read's form of the scorer (methods/_sab_native.cpp), `native_query`
# what it reads as the query, and `native_grads` turns its gradients into `backward`'s.

class MLPScorer(nn.Module):
    """a_j = v . tanh(W_m m_j + W_q h^ + b): an MLP over the pair [h^; m_j] with one hidden layer of
    width H (the paper's Figure 1). The key W_m m_j is made once per write; scanning every memory
    still costs a tanh over [B, |M|, H] per step. tanh(x) is evaluated as 2 sigmoid(2x) - 1 (the
    same function to rounding; torch's CPU tanh is about ten times slower than its sigmoid), so the
    scan is a = 2 v . sigmoid(2 W_m m_j + 2 q) - sum(v), with 2 W_m m_j cached at the write."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.key_width = hidden_size
        self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.query_proj = nn.Linear(hidden_size, hidden_size)
        self.v = nn.Parameter(torch.empty(hidden_size).uniform_(-1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size)))

    def key(self, m, memory):
        return self.key_proj(m)

    def cache(self, key):
        return 2 * key

    def query(self, h):
        return self.query_proj(h)

    def step_params(self):
        return (self.v,)

    def scan(self, q, memory):
        B, M, H = q.shape[0], memory.size, q.shape[1]
        s = memory.workspace(B, M, H)
        torch.add(memory.keys, 2 * q.unsqueeze(1), out=s).sigmoid_()
        return torch.addmv(-self.v.sum(), s.view(-1, H), self.v, alpha=2).view(B, M), q

    def chosen(self, q, memory, idx):                   # the chosen rows' tanh [B, n, H], from the scan
        return (memory.gather_workspace(idx, q.shape[1]).mul_(2).sub_(1).view(idx.shape + (-1,)),)

    def backward(self, g_a, q, m, extra, params, g_rows):
        (z,), (v,), H = extra, params, q.shape[1]
        g_pre = torch.mul(g_a.unsqueeze(2) * v, 1 - z * z, out=g_rows[:, :, H:])   # d a / d (W_m m + W_q h^ + b)
        return g_pre.sum(1), (torch.mv(z.view(-1, H).T, g_a.view(-1)),)

    # a_j = v . tanh(c_j / 2 + q) with c_j = 2 W_m m_j cached, evaluated as sum(v) - 2 v . 1 / (1 + E_j Q)
    # with E_j = exp(c_j) cached beside c_j and Q = exp(2 q) once per step: a multiply and a division
    # per element where tanh costs twenty operations (the compiled read falls back to tanh for a lane
    # whose |2 q| is too large for E_j Q to be exact; saturated products give +-1 as tanh does)
    native_kind = "mlp"
    native_extra = property(lambda self: self.key_width)   # E_j, as wide as c_j

    def native_cache(self, cached):
        return cached.exp()

    def native_query(self, q):
        return q

    def native_grads(self, g_q, g_v, params):
        return g_q, (g_v,)


class BilinearScorer(nn.Module):
    """a_j = m_j . (W h^ + b), this project's cheaper scorer (not the paper's). Computed as
    k_j . [h^; 1] with the key k_j = [W^T m_j; b . m_j] made once per write, so a step needs no
    query projection, and scanning every memory is one batched product with the cached keys."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.key_width = hidden_size + 1
        self.query_proj = nn.Linear(hidden_size, hidden_size)

    def key(self, m, memory):   # [W, b] is made once per sequence
        if memory.key_weight is None:
            memory.key_weight = torch.cat([self.query_proj.weight, self.query_proj.bias.unsqueeze(1)], 1)
        return m @ memory.key_weight

    def cache(self, key):
        return key

    def query(self, h):
        return None

    def step_params(self):   # W, for the gradient to h^ (its own gradient comes through the keys)
        return (self.query_proj.weight,)

    def scan(self, h, memory):
        h1 = F.pad(h, (0, 1), value=1.0)   # [h^; 1]
        # (this orientation of the batched product is several times faster than keys @ h1 on CPU)
        return torch.bmm(h1.unsqueeze(1), memory.keys.transpose(1, 2)).squeeze(1), h1

    def chosen(self, h1, memory, idx):
        return ()

    def backward(self, g_a, h1, m, extra, params, g_rows):
        (W,), H = params, m.shape[2]
        torch.mul(g_a.unsqueeze(2), h1.unsqueeze(1), out=g_rows[:, :, H:])
        return torch.bmm(g_a.unsqueeze(1), m).squeeze(1) @ W, (None,)   # sum_j g_a_j W^T m_j

    native_kind, native_extra = "dot", 1   # a_j = k_j . [h^; 1]; the compiled scan reads b . m_j apart

    def native_cache(self, cached):
        return cached[:, -1:]

    def native_query(self, h):
        return h

    def native_grads(self, g_h, g_v, params):   # sum_j g_a_j W^T m_j, from the chosen keys
        return g_h, (None,)


class SeparableScorer(nn.Module):
    """The release's a_j = w . tanh([h^; m_j]) = w_h . tanh(h^) + w_m . tanh(m_j); no bias, w ~ N(0, 0.01^2)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.key_width = 1
        self.w = nn.Parameter(torch.randn(2 * hidden_size) * 0.01)
        self.hidden_size = hidden_size

    def key(self, m, memory):
        return torch.tanh(m) @ self.w[self.hidden_size:]

    def cache(self, key):
        return key.unsqueeze(1)

    def query(self, h):
        return torch.tanh(h) @ self.w[:self.hidden_size]

    def step_params(self):
        return ()

    def scan(self, q, memory):
        return memory.keys.squeeze(2) + q.unsqueeze(1), q

    def chosen(self, q, memory, idx):
        return ()

    def backward(self, g_a, q, m, extra, params, g_rows):
        g_rows[:, :, -1] = g_a
        return g_a.sum(1), ()

    native_kind, native_extra = "add", 0   # a_j = k_j + q

    def native_query(self, q):
        return q

    def native_grads(self, g_q, g_v, params):
        return g_q, ()


SCORERS = {"mlp": MLPScorer, "bilinear": BilinearScorer, "separable": SeparableScorer}


# --- the sparsifier -------------------------------------------------------------------------------
class Sparsifier:
    """Weights from the chosen rows' scores a [B, n] (sorted, descending, when the memory is long)
    and their closed-form gradient.

    paper, long memory (n = k_top + 1): w = relu(a - a_n) / max(sum, floor); the threshold a_n gets
    gradient unless threshold_grad=False. paper, short memory (|M| <= k_top): softmax(a).
    released, long memory (n = k_top): w = relu(a - (a_n + 1e-7)) / (sum + 1e-7); short: raw a.
    """

    native = True   # long reads have a compiled form (methods/_sab_native.cpp)

    def __init__(self, k_top: int, released: bool, threshold_grad: bool = True, floor: float = EPS_PAPER):
        self.k_top, self.released, self.threshold_grad, self.floor = k_top, released, threshold_grad, floor
        self.n = k_top if released else k_top + 1
        # d u / d a for u = a - a_n (u_n = 0, or -1e-7 in the release: never weighted): the identity,
        # minus 1 in the threshold's column when the threshold gets gradient
        self.to_scores = torch.eye(self.n)
        if threshold_grad:
            self.to_scores[:, -1] -= 1
        self._cast = {}

    def threshold(self, a: torch.Tensor) -> torch.Tensor:
        """The score each of a long read's chosen scores is thresholded against (before the release's
        1e-7): the last, a_n."""
        return a[:, -1:]

    def _matrix(self, like):
        key = (like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = self.to_scores.to(like)
        return self._cast[key]

    def forward(self, a: torch.Tensor, long: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(w, what the backward needs besides w: for the long forms w_f, with w_f = w where the
        normaliser depends on the scores and 0 where it sits at its floor, and 1[w > 0] / Z)."""
        if not long:
            return (a if self.released else torch.softmax(a, 1)), ()
        if self.released:
            w = (a - (a[:, -1:] + EPS_RELEASED)).clamp_min_(0)
            Z = w.sum(1, keepdim=True).add_(EPS_RELEASED)
            w_f = w.div_(Z)
        else:
            w = (a - a[:, -1:]).clamp_min_(0)
            s = w.sum(1, keepdim=True)
            Z = s.clamp_min(self.floor)
            w = w.div_(Z)
            w_f = w * (s >= self.floor)
        return w, (w_f, w.sign().div_(Z))

    def backward(self, g_w: torch.Tensor, w: torch.Tensor, aux: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if not aux:
            return g_w if self.released else w * (g_w - (g_w * w).sum(1, keepdim=True))
        w_f, mask_over_Z = aux
        g_u = (g_w - (g_w * w_f).sum(1, keepdim=True)).mul_(mask_over_Z)   # through the normaliser and the relu
        return g_u @ self._matrix(g_u)                                        # and the threshold


class LiteralReleaseSparsifier(Sparsifier):
    """The arithmetic the release probably ran under PyTorch 0.1.12 (variant=released_literal):
    `attn_s - delta.repeat(1, T)` with scores attn_s [B, T] and delta [B] (each row's k_top-th score
    plus 1e-7) subtracts a [1, B*T] tensor, which 0.1.12, without broadcasting, applied elementwise
    to the flattened scores: memory t of row b is thresholded against delta[(b T + t) mod B], another
    row's k-th score. So every memory is a candidate (any number of them, or none, may be read), and
    a row's threshold score passes gradient to the rows it thresholds. The normaliser, a row sum kept
    as [B, 1] by 0.1.12's reductions, is row-wise: (sum + 1e-7). Short memory: raw scores, as in
    variant=released."""

    reads_all = True
    native = False

    def __init__(self, k_top: int, threshold_grad: bool = True):
        super().__init__(k_top, True, threshold_grad)

    def forward(self, a, long):
        if not long:
            return a, ()
        B, M = a.shape
        kth = a.topk(self.k_top, dim=1).indices[:, -1]                     # [B]
        source = (torch.arange(B, device=a.device)[:, None] * M + torch.arange(M, device=a.device)) % B
        w = (a - (a.gather(1, kth[:, None]).squeeze(1) + EPS_RELEASED)[source]).clamp_min_(0)
        Z = w.sum(1, keepdim=True).add_(EPS_RELEASED)
        w = w.div_(Z)
        return w, (w, w.sign().div_(Z), source, kth)

    def threshold(self, a):
        """Memory t of row b: row (b T + t) mod B's k-th score."""
        B, M = a.shape
        kth = a.topk(self.k_top, dim=1).values[:, -1]
        return kth[(torch.arange(B, device=a.device)[:, None] * M + torch.arange(M, device=a.device)) % B]

    def backward(self, g_w, w, aux):
        if not aux:
            return g_w
        w_f, mask_over_Z, source, kth = aux
        g_a = (g_w - (g_w * w_f).sum(1, keepdim=True)).mul_(mask_over_Z)
        if self.threshold_grad:   # each row's k-th score, minus what every memory it thresholds passed back
            g_delta = torch.zeros_like(g_a[:, 0]).index_add_(0, source.reshape(-1), g_a.reshape(-1))
            g_a[torch.arange(g_a.shape[0], device=g_a.device), kth] -= g_delta
        return g_a


class _AttentionStep(torch.autograd.Function):
    """h = h^ + sum_j w_j m_j over the chosen memories, for one step, as one autograd node; gradients
    to h^, the query, the scorer's per-step parameters, and (through the accumulator and `_Link`) the
    chosen memories' values and keys. With `with_r`, returns (h, r) (the released readout sees r)."""

    @staticmethod
    def forward(ctx, scorer, sparsifier, memory, with_r, handle, h_hat, q, *params):
        long = memory.size > sparsifier.k_top
        ctx.scorer, ctx.sparsifier, ctx.store, ctx.query_is_h = scorer, sparsifier, memory.store, q is None
        ctx.width = memory.width
        ctx.native = memory.native and sparsifier.native and long
        if ctx.native:   # the same read, compiled (methods/_sab_native.cpp)
            query = scorer.native_query(h_hat if q is None else q)
            query, flat, weights, m, z, h, r = _sab_native.read(memory, scorer.native_kind, query, params, h_hat,
                                                                sparsifier, with_r)
            if memory.trace is not None:
                a, w = weights[0], weights[1]
                memory.trace.read(a, w, sparsifier.threshold(a))
            ctx.save_for_backward(flat, weights, m, query, *(() if z is None else (z,)), *params)
            return (h, r) if with_r else h
        idx, flat, a, w, aux, m, query, extra = choose_and_weigh(scorer, sparsifier, memory, h_hat if q is None else q)
        if memory.trace is not None:
            memory.trace.read(a, w, sparsifier.threshold(a) if long else None)
        ctx.n_aux, ctx.n_extra = len(aux), len(extra)
        ctx.save_for_backward(flat, w, m, query, *aux, *extra, *params)
        if with_r:
            r = torch.bmm(w.unsqueeze(1), m).squeeze(1)
            return h_hat + r, r
        return torch.baddbmm(h_hat.unsqueeze(1), w.unsqueeze(1), m).squeeze(1)

    @staticmethod
    def backward(ctx, g_h, g_r=None):
        g_read = g_h if g_r is None else g_h + g_r
        if ctx.native:
            flat, weights, m, query, *params = ctx.saved_tensors
            z = params.pop(0) if ctx.scorer.native_kind == "mlp" else None
            g_q, g_v = _sab_native.read_backward(g_read, ctx.scorer.native_kind, ctx.sparsifier.threshold_grad,
                                                 flat, weights, m, query, z, params, ctx.store, ctx.width)
            g_q, g_params = ctx.scorer.native_grads(g_q, g_v, params)
        else:
            flat, w, m, query, *rest = ctx.saved_tensors
            aux, rest = rest[:ctx.n_aux], rest[ctx.n_aux:]
            extra, params = rest[:ctx.n_extra], rest[ctx.n_extra:]
            H = g_h.shape[1]
            g_a = ctx.sparsifier.backward(torch.bmm(g_read.unsqueeze(1), m.transpose(1, 2)).squeeze(1), w, aux)
            g_rows = m.new_empty(m.shape[:2] + (ctx.width,))               # [d/d m_j; d/d key_j]
            torch.mul(w.unsqueeze(2), g_read.unsqueeze(1), out=g_rows[:, :, :H])
            g_q, g_params = ctx.scorer.backward(g_a, query, m, extra, params, g_rows)
            ctx.store.accumulate(flat, g_rows.view(-1, ctx.width))
        # the handle only orders the backward (`_Link` j after these reads): no gradient to pass
        if ctx.query_is_h:
            return (None, None, None, None, None, g_h + g_q, None) + g_params
        return (None, None, None, None, None, g_h, g_q) + g_params


def choose_and_weigh(scorer, sparsifier, memory, q):
    """Without gradient: the chosen memories idx [B, n] and their rows in the buffer, scores a, weights w
    and what the sparsifier's backward needs, their values m [B, n, H], and the query and what the
    scorer's backward needs.
    Long memory: the top n rows by score (sorted, descending; ties broken by torch.topk's order,
    deterministic on CPU; the compiled read puts the earlier memory first); short: every row. (Called where autograd does not record: inside the
    Function's forward, or under no_grad.)"""
    scores, q = scorer.scan(q, memory)
    long = memory.size > sparsifier.k_top
    if long and not getattr(sparsifier, "reads_all", False):
        a, idx = scores.topk(sparsifier.n, dim=1)
    else:
        a, idx = scores, torch.arange(memory.size, device=q.device).expand(q.shape[0], -1)
    w, aux = sparsifier.forward(a, long)
    flat = memory.flat(idx)
    return idx, flat, a, w, aux, memory.gather(flat).view(idx.shape + (-1,)), q, scorer.chosen(q, memory, idx)


class SABNetwork(Network):
    """Cell + sparse attention over past hidden states + linear readout; carry = (cell state, Memory)."""

    def __init__(self, cell: Cell, output_size: int, k_top: int, k_att: int, variant: str = "paper",
                 scorer: str = "mlp", store: str = "attended", threshold_grad: bool = True,
                 floor: float = EPS_PAPER):
        super().__init__()
        self.cell, self.k_top, self.k_att, self.variant = cell, k_top, k_att, variant
        self.store_provisional = store == "provisional"
        self.released = variant.startswith("released")
        H = cell.hidden_size
        self.scorer = SCORERS[scorer](H)
        self.sparsifier = (LiteralReleaseSparsifier(k_top, threshold_grad) if variant == "released_literal"
                           else Sparsifier(k_top, self.released, threshold_grad, floor))
        self.readout = nn.Linear(2 * H if self.released else H, output_size)

    _trace = None

    @contextlib.contextmanager
    def tracing(self):
        """Within the block, every sequence's reads and writes are recorded into the yielded Trace."""
        self._trace = Trace()
        try:
            yield self._trace
        finally:
            self._trace = None

    def init_carry(self, batch_size):
        state = self.cell.init_state(batch_size)
        memory = Memory(state[0], self.scorer.key_width, self._trace, self.scorer.native_extra)
        if self.released:   # the release's first memory is the zero initial state
            self._write(memory, state[0])
        return state, memory

    def _write(self, memory, m):
        key = self.scorer.key(m, memory)
        with torch.no_grad():
            cached = self.scorer.cache(key)
            extra = self.scorer.native_cache(cached) if memory.extra else None
        memory.write(m, key, cached, extra)

    def truncate(self, carry):
        state, memory = carry
        return detach(state), memory   # cut the local path; the memories keep their graphs

    def hidden(self, carry):
        return self.cell.hidden(carry[0])

    def step(self, x_t, carry):
        state, memory = carry
        state = self.cell(x_t, state)
        h_hat = self.cell.hidden(state)
        h, r = self.attend(h_hat, memory)
        state = (h,) + tuple(state[1:])
        memory.t += 1
        if memory.t % self.k_att == 0:
            self._write(memory, h_hat if self.store_provisional else h)
        out = self.readout(torch.cat([h, r], -1) if self.released else h)
        return out, (state, memory)

    def attend(self, h_hat, memory):
        """(h^ + r, r): the provisional state plus the read-out r of the memory (r only for the
        released variant's readout, else None)."""
        if memory.size == 0:
            return h_hat, torch.zeros_like(h_hat) if self.released else None
        out = _AttentionStep.apply(self.scorer, self.sparsifier, memory, self.released, memory.handle, h_hat,
                                   self.scorer.query(h_hat), *self.scorer.step_params())
        return out if self.released else (out, None)

    def weights(self, h_hat, memory) -> torch.Tensor:
        """The dense attention weights [|M|, B] (zeros for rows not chosen), for tests and plots."""
        dense = h_hat.new_zeros(h_hat.shape[0], memory.size)
        if memory.size:
            with torch.no_grad():
                q = self.scorer.query(h_hat)
                idx, _, _, w, *_ = choose_and_weigh(self.scorer, self.sparsifier, memory, h_hat if q is None else q)
            dense = dense.scatter(1, idx, w)
        return dense.T

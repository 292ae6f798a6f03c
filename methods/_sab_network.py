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

How the memory keeps every skip gradient and stays cheap: each stored h_t is kept by reference in
an autograd chain (`_Link`), and its value is also copied into a no-grad buffer (with a no-grad
cache of its key, its part of the score, for scorers that have one; the bilinear scorer's key is
the value). Each step chooses the top memories from the cached keys without gradient, reads only
those (`_Read`) and recomputes only their scores with gradient.
`_Read`'s backward adds its gradient into a per-sequence accumulator; `_Link` hands memory j its
accumulated gradient, and autograd's dependency order runs `_Link` j only after every read that
could have chosen memory j. So nothing is concatenated per step, nothing loops over memories in
Python, and the buffers autograd never saves are the only ones written in place. The autograd
nodes hold only the accumulator, which holds no tensor of the graph: no reference cycle (tested).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from harness.models import Cell, Network, detach

EPS_PAPER = 1e-12     # floor of the normaliser: the weights sum to exactly 1 unless all k_top tie with the threshold
EPS_RELEASED = 1e-7   # the release adds this to the threshold and to the normaliser


class _GradStore:
    """Gradient accumulated for each memory row during one backward pass. Held by the autograd
    nodes; it references no tensor of the graph, so no reference cycle keeps the graph alive."""

    def __init__(self):
        self.rows, self.grad = 0, None

    def accumulate(self, idx: torch.Tensor, g: torch.Tensor) -> None:
        if self.grad is None or self.grad.shape[1] < self.rows:
            old, self.grad = self.grad, g.new_zeros(g.shape[0], self.rows, g.shape[2])
            if old is not None:
                self.grad[:, :old.shape[1]] = old
        flat = (_lanes(idx) * self.grad.shape[1] + idx).reshape(-1)
        self.grad.view(-1, g.shape[2]).index_add_(0, flat, g.reshape(-1, g.shape[2]))

    def take(self, j: int) -> torch.Tensor | None:
        if self.grad is None or j >= self.grad.shape[1]:
            return None
        g = self.grad[:, j].clone()
        self.grad[:, j].zero_()   # ready for another backward pass through the same graph
        return g


def _lanes(idx):
    return torch.arange(idx.shape[0], device=idx.device)[:, None].expand_as(idx)


class _Link(torch.autograd.Function):
    """handle_j = Link(handle_{j-1}, m_j): a scalar token that depends on every stored memory."""

    @staticmethod
    def forward(ctx, handle, m, store, j):
        ctx.store, ctx.j = store, j
        return handle.new_zeros(())

    @staticmethod
    def backward(ctx, g_handle):
        return g_handle, ctx.store.take(ctx.j), None, None


class _Read(torch.autograd.Function):
    """values[b, :, idx[b, s]] for chosen memories; gradients go to the accumulator, and reach the
    stored tensors through the `_Link` chain that `handle` closes."""

    @staticmethod
    def forward(ctx, handle, values, idx, store):
        ctx.store = store
        ctx.save_for_backward(idx)
        return values[_lanes(idx), :, idx]   # values [B, H, cap] -> [B, n, H]

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        ctx.store.accumulate(idx, g)
        return g.new_zeros(()), None, None, None


class Memory:
    """The stored hidden states of one batch of sequences (no-grad copies [B, H, |M|], one column
    per memory, so scoring all of them is one batched product; cached keys [B, |M|, ...] if the
    scorer has any), and the step count. Part of the carry and appended to in place: a carry is
    used once, in order (as `run` does)."""

    def __init__(self, like: torch.Tensor):
        self.size, self.t = 0, 0
        self.values = self.keys = None
        self.store = _GradStore()
        self.handle = like.new_zeros(())

    def _grow(self, buf, new, dim):
        """buf with `new` stored at position self.size along `dim`, doubling the capacity when full."""
        if buf is None or self.size == buf.shape[dim]:
            shape = list(new.shape)
            shape.insert(dim, max(8, 2 * self.size))
            grown = new.new_empty(shape)
            if self.size:
                grown.narrow(dim, 0, self.size).copy_(buf.narrow(dim, 0, self.size))
            buf = grown
        buf.select(dim, self.size).copy_(new)
        return buf

    def write(self, m: torch.Tensor, key: torch.Tensor | None) -> None:
        with torch.no_grad():
            self.values = self._grow(self.values, m, 2)
            if key is not None:
                self.keys = self._grow(self.keys, key, 1)
        self.store.rows = self.values.shape[2]
        self.handle = _Link.apply(self.handle, m, self.store, self.size)
        self.size += 1

    def read(self, idx: torch.Tensor) -> torch.Tensor:
        """Memories idx [B, n], [B, n, H], with gradient to the stored tensors."""
        return _Read.apply(self.handle, self.values, idx, self.store)

    def cached_keys(self) -> torch.Tensor:
        """Without gradient: the keys [B, |M|, ...], or the values [B, H, |M|] for a scorer without keys."""
        return self.values[:, :, :self.size] if self.keys is None else self.keys[:, :self.size]

    def rows(self) -> torch.Tensor:
        """The stored values [|M|, B, H] (no gradient), for tests and plots."""
        return self.values[:, :, :self.size].permute(2, 0, 1)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.keys) if t is not None)


class BilinearScorer(nn.Module):
    """a_j = m_j . (W h^ + b): query-dependent; the memory itself is the key, so choosing among all
    memories is one batched product with the stored values, and nothing but the values is cached."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query_proj = nn.Linear(hidden_size, hidden_size)

    def key(self, m):
        return None

    def query(self, h):
        return self.query_proj(h)

    def from_keys(self, q, keys):      # keys = values [B, H, M] -> [B, M]
        return torch.bmm(q.unsqueeze(1), keys).squeeze(1)

    def score_rows(self, q, m):        # m [B, n, H] -> [B, n]
        return (m * q.unsqueeze(1)).sum(-1)


class MLPScorer(nn.Module):
    """a_j = v . tanh(W_m m_j + W_q h^ + b): an MLP over the pair (hidden width = hidden size);
    keys W_m m_j are cached, but choosing still costs a tanh over every memory each step."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.query_proj = nn.Linear(hidden_size, hidden_size)
        self.v = nn.Parameter(torch.empty(hidden_size).uniform_(-1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size)))

    def key(self, m):
        return self.key_proj(m)

    def query(self, h):
        return self.query_proj(h)

    def from_keys(self, q, keys):
        return torch.tanh(keys + q.unsqueeze(1)) @ self.v

    def score_rows(self, q, m):
        return self.from_keys(q, self.key_proj(m))


class SeparableScorer(nn.Module):
    """The release's a_j = w . tanh([h^; m_j]) = w_h . tanh(h^) + w_m . tanh(m_j); no bias, w ~ N(0, 0.01^2)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2 * hidden_size) * 0.01)
        self.hidden_size = hidden_size

    def key(self, m):
        return torch.tanh(m) @ self.w[self.hidden_size:]

    def query(self, h):
        return torch.tanh(h) @ self.w[:self.hidden_size]

    def from_keys(self, q, keys):
        return keys + q.unsqueeze(1)

    def score_rows(self, q, m):
        return self.from_keys(q, self.key(m))


SCORERS = {"bilinear": BilinearScorer, "mlp": MLPScorer, "separable": SeparableScorer}


class SABNetwork(Network):
    """Cell + sparse attention over past hidden states + linear readout; carry = (cell state, Memory)."""

    def __init__(self, cell: Cell, output_size: int, k_top: int, k_att: int, variant: str = "paper",
                 scorer: str = "bilinear", store: str = "attended"):
        super().__init__()
        self.cell, self.k_top, self.k_att, self.variant = cell, k_top, k_att, variant
        self.store_provisional = store == "provisional"
        self.released = variant == "released"
        H = cell.hidden_size
        self.scorer = SCORERS[scorer](H)
        self.readout = nn.Linear(2 * H if self.released else H, output_size)

    def init_carry(self, batch_size):
        state = self.cell.init_state(batch_size)
        memory = Memory(state[0])
        if self.released:   # the release's first memory is the zero initial state
            self._write(memory, state[0])
        return state, memory

    def _write(self, memory, h):
        with torch.no_grad():
            key = self.scorer.key(h)
        memory.write(h, key)

    def truncate(self, carry):
        state, memory = carry
        return detach(state), memory   # cut the local path; the memories keep their graphs

    def hidden(self, carry):
        return self.cell.hidden(carry[0])

    def step(self, x_t, carry):
        state, memory = carry
        state = self.cell(x_t, state)
        h_hat = self.cell.hidden(state)
        r = self.read(h_hat, memory)
        h = h_hat + r
        state = (h,) + tuple(state[1:])
        memory.t += 1
        if memory.t % self.k_att == 0:
            self._write(memory, h_hat if self.store_provisional else h)
        out = self.readout(torch.cat([h, r], -1) if self.released else h)
        return out, (state, memory)

    # --- attention ------------------------------------------------------------------------------
    def attend(self, h_hat, memory):
        """(memories idx [B, n], their weights w [B, n], their values [B, n, H]), or None if empty.

        Long memory (more than k_top entries): the top k_top + 1 (paper) or k_top (release) rows by
        score are chosen without gradient from the cached keys, and only their scores are recomputed
        with gradient. Short memory: every row, softmax weights (paper) or raw scores (release).
        """
        M, B = memory.size, h_hat.shape[0]
        if M == 0:
            return None
        q = self.scorer.query(h_hat)
        if M <= self.k_top:
            idx = torch.arange(M, device=h_hat.device).expand(B, M)
            m = memory.read(idx)
            a = self.scorer.score_rows(q, m)
            return idx, (a if self.released else torch.softmax(a, 1)), m
        n = self.k_top if self.released else self.k_top + 1
        with torch.no_grad():
            idx = self.scorer.from_keys(q, memory.cached_keys()).topk(n, dim=1).indices   # sorted, descending
        m = memory.read(idx)
        a = self.scorer.score_rows(q, m)
        if self.released:   # threshold at the k-th score plus eps: k_top - 1 rows keep weight
            w = F.relu(a - (a[:, -1:] + EPS_RELEASED))
            return idx, w / (w.sum(1, keepdim=True) + EPS_RELEASED), m
        # threshold at the (k_top+1)-th score, which gets gradient too; its own weight is relu(0) = 0
        # with zero gradient, so it stays in the sum rather than being sliced off (two fewer nodes)
        w = F.relu(a - a[:, -1:])
        return idx, w / w.sum(1, keepdim=True).clamp_min(EPS_PAPER), m

    def read(self, h_hat, memory):
        chosen = self.attend(h_hat, memory)
        if chosen is None:
            return torch.zeros_like(h_hat)
        _, w, m = chosen
        return torch.bmm(w.unsqueeze(1), m).squeeze(1)

    def weights(self, h_hat, memory) -> torch.Tensor:
        """The dense attention weights [|M|, B] (zeros for rows not chosen), for tests and plots."""
        dense = h_hat.new_zeros(h_hat.shape[0], memory.size)
        chosen = self.attend(h_hat, memory)
        if chosen is not None:
            idx, w, _ = chosen
            dense = dense.scatter(1, idx, w)
        return dense.T

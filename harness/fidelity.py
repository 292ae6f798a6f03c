"""Gradient fidelity against the reference gradient, as defined in DESIGN.md.

The reference is the exact gradient of the summed sequence loss of the method's own network at
the same parameters and batch: full backpropagation through time with no truncation. It is
computed here, never by a method.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from .models import Network, run
from .task import Batch, stream_seed


def reference_gradient(net: Network, batch: Batch) -> list[torch.Tensor]:
    params = list(net.parameters())
    out, _ = run(net, batch.x, net.init_carry(batch.batch_size))
    grads = torch.autograd.grad(batch.loss(out), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def flat(grads) -> torch.Tensor:
    return torch.cat([g.detach().reshape(-1) for g in grads]).double()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return None
    return float(a @ b / (na * nb))


def rel_error(g: torch.Tensor, ref: torch.Tensor) -> float | None:
    n = ref.norm()
    return None if n == 0 else float((g - ref).norm() / n)


def compare(grads, ref, names: list[str], recurrent: list[str]) -> dict:
    """Cosine and relative error, over all parameters, the recurrent ones, and each parameter."""
    rec = [i for i, n in enumerate(names) if n in set(recurrent)]
    g, r = flat(grads), flat(ref)
    return {
        "cosine": cosine(g, r),
        "cosine_recurrent": cosine(flat([grads[i] for i in rec]), flat([ref[i] for i in rec])) if rec else None,
        "rel_error": rel_error(g, r),
        "groups": {n: {"cosine": cosine(flat([a]), flat([b])), "rel_error": rel_error(flat([a]), flat([b]))}
                   for n, a, b in zip(names, grads, ref)},
    }


def stochastic_figures(samples: torch.Tensor, ref: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> dict:
    """Relative bias (debiased, with bootstrap standard error) and relative variance of K draws
    `samples` [K, P] of an estimator of `ref` [P], as defined in DESIGN.md."""
    K = samples.shape[0]
    if K < 2:
        return {}
    # Every statistic is a function of the Gram matrix of the errors e_k = g_k - g* (taken about g*,
    # not expanded around 0, so a small bias does not cancel catastrophically), so resampling the K
    # draws costs K x K per resample, not K x P.
    err = (samples - ref).double()
    G = (err @ err.T).cpu().numpy()
    rr = float(ref.double() @ ref.double())

    def figures(idx):
        """(b, v, |m - g*|^2 / |g*|^2) of the draws idx (a resample of 0..K-1; [..., K] vectorised)."""
        idx = np.atleast_2d(idx)
        W = np.zeros(idx.shape[:-1] + (K,))
        np.add.at(W, (np.arange(idx.shape[0])[:, None], idx), 1.0)
        dist2 = np.einsum("nk,kl,nl->n", W, G, W) / K**2 / rr          # |m - g*|^2 / |g*|^2
        v = (W @ np.diag(G) / rr - K * dist2) / (K - 1)                 # sum_k |g_k - m|^2 / ((K-1)|g*|^2)
        return np.sqrt(np.maximum(0.0, dist2 - v / K)), v, dist2

    b, v, dist2 = (float(a[0]) for a in figures(np.arange(K)))
    rng = np.random.default_rng(seed)
    boot = stats.bootstrap((np.arange(K),), lambda idx, axis=-1: figures(idx)[0], vectorized=True,
                           n_resamples=n_boot, batch=100, method="percentile", rng=rng)
    # Detection is decided on b^2 = |m - g*|^2/|g*|^2 - v/K (unclipped), not on b: sqrt's slope is
    # unbounded at 0, so near zero SE(b) ~ SE(b^2) / (2 b) and "b > 2 SE(b)" would be "b^2 > SE(b^2)",
    # a one-sigma test that flags an unbiased estimator about one time in six.
    boot2 = stats.bootstrap((np.arange(K),), lambda idx, axis=-1: (lambda f: f[2] - f[1] / K)(figures(idx)),
                            vectorized=True, n_resamples=n_boot, batch=100, method="percentile", rng=rng)
    b2, se2 = dist2 - v / K, float(boot2.standard_error)
    return {"rel_bias": b, "rel_bias_se": float(boot.standard_error), "rel_variance": v,
            "rel_bias_raw": float(np.sqrt(max(dist2, 0.0))), "rel_bias2": b2, "rel_bias2_se": se2,
            "bias_detected": bool(b2 > 2 * se2), "samples": K}


def measure(method, net: Network, batch: Batch, seed: int, samples: int) -> dict:
    """Fidelity of `method` on `batch` at the network's current parameters: cosines, relative
    error, the norms |g*| (`exact_grad_norm`) and |g| (`grad_norm`, for a stochastic method the mean
    norm of one draw, the size of the step an optimizer sees) and their ratio, and for stochastic
    methods bias and variance over `samples` draws. A non-finite reference or estimate gives no
    angles, only `nonfinite` naming which ("reference" or "estimate")."""
    names = [n for n, _ in net.named_parameters()]
    ref = reference_gradient(net, batch)
    r = flat(ref)
    if not torch.isfinite(r).all():
        return {"nonfinite": "reference", "exact_grad_norm": None, "grad_norm": None, "grad_norm_ratio": None}
    K = samples if method.gradient_kind == "stochastic" else 1
    draws, per = [], []
    for k in range(K):
        rng = torch.Generator().manual_seed(stream_seed(seed * 100_003 + k, "method"))
        _, grads = method.gradient(net, batch, rng)
        g = flat(grads)
        if not torch.isfinite(g).all():
            return {"nonfinite": "estimate", "exact_grad_norm": float(r.norm()), "grad_norm": None,
                    "grad_norm_ratio": None}
        per.append(compare(grads, ref, names, net.recurrent_parameter_names()))
        draws.append(g)
    result = per[0]
    if K > 1:
        mean_of = lambda key: _mean([p[key] for p in per])
        result = {"cosine": mean_of("cosine"), "cosine_recurrent": mean_of("cosine_recurrent"),
                  "rel_error": mean_of("rel_error"),
                  "groups": {n: {"cosine": _mean([p["groups"][n]["cosine"] for p in per])} for n in names}}
        result.update(stochastic_figures(torch.stack(draws), r, seed=seed))
    exact = float(r.norm())
    estimate = float(np.mean([float(d.norm()) for d in draws]))
    for n, g_star in zip(names, ref):   # per parameter: how large the exact gradient is there
        result["groups"][n]["exact_grad_norm"] = float(g_star.detach().double().norm())
    result.update(exact_grad_norm=exact, grad_norm=estimate, grad_norm_ratio=estimate / exact if exact else None)
    return result


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None

"""Stochastic Lanczos quadrature (SLQ), deflated by the top eigenpairs.

tr f(A) = sum_i f(lambda_i) over the deflated eigenpairs U (exact), plus the trace of f over the
complement of span(U), estimated with Rademacher probes projected onto that complement:
E[z'^T f(A) z'] with z' = (I - U U^T) z is that trace. For each probe, m Lanczos steps give a
tridiagonal T whose eigenvalues (nodes) and squared first eigenvector components times ||z'||^2
(weights) form the Gauss quadrature of z'^T f(A) z', exact for polynomials of degree < 2m.

Every probe runs its own recurrence, but all of them advance together: each Lanczos step is ONE
operator call on the block of all probes' vectors, so b probes x m steps cost m calls, not b m.
Each probe's vector is reorthogonalised (twice) against U and its own earlier vectors, so round
off cannot bring back the deflated directions or produce ghost copies of converged eigenvalues.

Deflation is what makes this accurate on kernel spectra: most of their mass sits in a few large
eigenvalues, which plain SLQ resolves only through the probes' random weights (0.1-0.2 nats of
error on von Neumann entropies); computed exactly, they leave SLQ a flat remainder.

A probe whose recurrence breaks down (its Krylov space is invariant: a low-rank remainder, or
one resolved completely) stops there with the exact quadrature of that space; the rest of its
rows carry weight 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._blocks import generator, project_out, rademacher
from .lanczos import Eigenpairs, _positive_int, top_eigenpairs
from .operator import as_operator

_BREAKDOWN = 1e-10  # beta below this fraction of the operator's scale ends a recurrence


@dataclass
class Quadrature:
    """Deflated eigenvalues ``top`` [k], per-probe quadrature ``nodes`` and ``weights``
    [probes, steps] (weight 0 past a probe's breakdown), dimension ``n`` and operator ``calls``."""

    top: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    n: int
    calls: int

    def trace(self, f, controls=()) -> tuple[float, float]:
        """(tr f(A), standard error over the probes) for an elementwise torch function f.

        ``controls``: pairs (g, tr g(A)) of functions whose exact traces are known (tr A itself,
        say). Their per-probe errors, regressed out of f's, remove the part of the probe noise
        that f shares with them: on a flat remainder -x log x is nearly linear in x, and a
        control x cuts the error several-fold at no cost.
        """
        exact = float(f(self.top).sum()) if self.top.numel() else 0.0
        if self.nodes.numel() == 0:
            return exact, 0.0
        y = self._per_probe(f)
        probes = y.numel()
        if controls and probes > len(controls) + 1:
            x = torch.stack([self._per_probe(g) - (float(total) - (float(g(self.top).sum()) if self.top.numel() else 0.0))
                             for g, total in controls], dim=1)
            design = torch.cat([torch.ones(probes, 1, dtype=torch.float64), x], dim=1)
            coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
            residual = y - design @ coef
            dof = probes - design.shape[1]
            se = math.sqrt(float(residual.square().sum()) / dof / probes)
            return exact + float(coef[0]), se
        se = float(y.std(correction=1)) / math.sqrt(probes) if probes > 1 else math.nan
        return exact + float(y.mean()), se

    def _per_probe(self, f) -> torch.Tensor:
        terms = torch.where(self.weights > 0, self.weights * f(self.nodes), torch.zeros_like(self.weights))
        return terms.sum(dim=1)


def spectral_quadrature(op, *, probes: int = 32, steps: int = 40, deflate=None, seed: int = 0) -> Quadrature:
    """Gauss quadrature of the spectrum of ``op`` for any later tr f(A), deflated by ``deflate``
    (an ``Eigenpairs``, or an int k to compute the top k first; None: plain SLQ)."""
    op = as_operator(op)
    probes = _positive_int(probes, "probes")
    steps = _positive_int(steps, "steps")
    calls_before = op.calls
    if isinstance(deflate, int) and not isinstance(deflate, bool):
        deflate = top_eigenpairs(op, deflate, seed=seed)
    elif deflate is not None and not isinstance(deflate, Eigenpairs):
        raise TypeError(f"deflate must be None, an int or Eigenpairs, got {type(deflate).__name__}")
    n = op.n
    u = deflate.vectors if deflate is not None else torch.zeros(n, 0, dtype=torch.float64, device=op.device)
    top = deflate.values.to(torch.float64) if deflate is not None else torch.zeros(0, dtype=torch.float64)
    steps = min(steps, n - u.shape[1])
    if steps == 0:  # the deflation took the whole space
        empty = torch.zeros(probes, 0, dtype=torch.float64)
        return Quadrature(top.cpu(), empty, empty.clone(), n, op.calls - calls_before)

    z = project_out(rademacher(n, probes, generator(seed), op.device), u)
    norms2 = z.square().sum(dim=0)
    v = z / norms2.sqrt().clamp(min=torch.finfo(torch.float64).tiny)
    alpha = torch.zeros(probes, steps, dtype=torch.float64, device=op.device)
    beta = torch.zeros_like(alpha)
    length = torch.full((probes,), steps, dtype=torch.int64, device=op.device)
    active = norms2 > 0
    length[~active] = 0
    basis = torch.zeros(n, probes, steps, dtype=torch.float64, device=op.device)
    scale = 0.0
    for j in range(steps):
        basis[:, :, j] = v
        w = op(v)
        a = (v * w).sum(dim=0)
        alpha[:, j] = torch.where(active, a, torch.zeros_like(a))
        for _ in range(2):  # against U and the probe's own earlier vectors
            w = project_out(w, u)
            w = w - torch.einsum("npj,pj->np", basis[:, :, : j + 1], torch.einsum("npj,np->pj", basis[:, :, : j + 1], w))
        b = w.norm(dim=0)
        scale = max(scale, float(a.abs().max()), float(b.max()))
        ended = active & (b <= _BREAKDOWN * scale)
        length[ended] = j + 1
        active = active & ~ended
        if j + 1 == steps or not bool(active.any()):
            break
        beta[:, j] = torch.where(active, b, torch.zeros_like(b))
        v = torch.where(active, w / b.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(w))

    nodes = torch.zeros(probes, steps, dtype=torch.float64)
    weights = torch.zeros_like(nodes)
    alpha, beta, length, norms2 = alpha.cpu(), beta.cpu(), length.cpu(), norms2.cpu()
    for p in range(probes):
        m = int(length[p])
        if m == 0:
            continue
        t = torch.diag(alpha[p, :m]) + torch.diag(beta[p, : m - 1], 1) + torch.diag(beta[p, : m - 1], -1)
        theta, s = torch.linalg.eigh(t)
        nodes[p, :m] = theta
        weights[p, :m] = norms2[p] * s[0].square()
    return Quadrature(top.cpu(), nodes, weights, n, op.calls - calls_before)

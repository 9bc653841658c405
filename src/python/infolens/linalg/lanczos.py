"""Top eigenpairs of a symmetric operator by block Lanczos with full reorthogonalisation.

The basis Q of the block Krylov space span{X, AX, A^2 X, ...} is kept orthonormal by projecting
every new block against all of Q twice (CGS2); A Q is kept beside it, so the Rayleigh-Ritz step
(eigenpairs of Q^T A Q) and the residual norms ||A u - theta u|| cost no extra application of
the operator: each iteration is exactly one call on one block. When the basis reaches its size
limit it is restarted thickly: the best Ritz vectors (with their images under A, again without
a call) are kept, and the next block spans their residuals, the directions the Krylov space
would have grown into.

Rank deficiency is the normal case here, not an accident: a kernel matrix of c clusters of
identical points has rank c, the identity has one eigenvalue of multiplicity n. Directions that
a new block lacks are refilled with random vectors orthogonal to the basis (``_blocks.extend``),
so the iteration never divides by a vanishing norm and still finds the eigenvalue 0 and repeated
eigenvalues with their full multiplicity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._blocks import extend, gaussian, generator
from .operator import as_operator


@dataclass
class Eigenpairs:
    """``values`` [k] (descending by value, or by magnitude), ``vectors`` [n, k] orthonormal,
    ``residuals`` [k] = ||A u - theta u||, the number of operator ``calls``, and ``converged``."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    calls: int
    converged: bool


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _ritz(q, aq, k: int, which: str):
    h = q.T @ aq
    theta, s = torch.linalg.eigh((h + h.T) / 2)
    order = torch.argsort(theta.abs() if which == "magnitude" else theta, descending=True)
    theta, s = theta[order], s[:, order]
    u, au = q @ s, aq @ s
    residuals = (au[:, :k] - u[:, :k] * theta[:k]).norm(dim=0)
    return theta, u, au, residuals


def top_eigenpairs(op, k: int, *, which: str = "largest", block: int | None = None,
                   max_calls: int | None = None, tol: float = 1e-7, seed: int = 0) -> Eigenpairs:
    """The k largest (``which="largest"``) or largest-magnitude (``"magnitude"``) eigenpairs.

    Converged when every ||A u - theta u|| <= tol * max|theta|; otherwise it stops after
    ``max_calls`` operator calls (default 40) and says so in ``converged``.
    """
    op = as_operator(op)
    k = _positive_int(k, "k")
    if which not in ("largest", "magnitude"):
        raise ValueError(f"which must be 'largest' or 'magnitude', got {which!r}")
    n = op.n
    k = min(k, n)
    b = min(n, _positive_int(block, "block") if block is not None else max(8, k // 2 + 4))
    max_calls = 40 if max_calls is None else _positive_int(max_calls, "max_calls")
    max_basis = min(n, max(3 * k, k + 3 * b))
    gen = generator(seed)
    q = torch.zeros(n, 0, dtype=torch.float64, device=op.device)
    aq = torch.zeros_like(q)
    x = extend(q, gaussian(n, b, gen, op.device), gen)
    calls = 0
    while True:
        w = op(x)
        calls += 1
        q, aq = torch.cat([q, x], dim=1), torch.cat([aq, w], dim=1)
        theta, u, au, residuals = _ritz(q, aq, k, which)
        scale = float(theta.abs().max()) if theta.numel() else 0.0
        done = q.shape[1] == n or bool((residuals <= tol * max(scale, math.ulp(1.0))).all())
        if done or calls >= max_calls:
            return Eigenpairs(theta[:k].clone(), u[:, :k].contiguous(), residuals, calls, done)
        if q.shape[1] + b > max_basis and max_basis < n:  # thick restart: the best Ritz pairs, then their residuals
            keep = min(max_basis - b, k + b)
            q, aq = u[:, :keep], au[:, :keep]
            # the kept residuals span one block; its dominant directions, not the residuals of
            # converged pairs, which are round-off
            left, _, _ = torch.linalg.svd(aq - q * theta[:keep], full_matrices=False)
            x = extend(q, left[:, :b], gen)
        else:
            x = extend(q, w, gen)
        x = x[:, :b]
        if x.shape[1] == 0:  # no room left: q spans the space
            theta, u, au, residuals = _ritz(q, aq, k, which)
            return Eigenpairs(theta[:k].clone(), u[:, :k].contiguous(), residuals, calls, True)

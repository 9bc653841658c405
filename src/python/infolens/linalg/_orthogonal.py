"""Orthogonal projection and orthonormal extension of blocks (the numerically delicate part).

Projection is classical Gram-Schmidt applied twice (CGS2) against the whole basis. One classical
pass leaves components along the basis of size eps * ||x|| / ||result||, large when most of x lay
in the basis; the second pass, starting from a vector that no longer has that cancellation, brings
them down to eps ("twice is enough", Giraud, Langou & Rozloznik 2005). CGS2 is two matrix
products per pass, so it runs at BLAS-3 speed on either device, unlike modified Gram-Schmidt.

Extension turns a projected block into new orthonormal basis columns and is where rank
deficiency is handled. Krylov methods meet it constantly here: a kernel matrix of c clusters of
identical points has rank c, the identity has one eigenvalue of multiplicity n, a deflated
remainder may be exactly zero. The block's numerical rank is read from the singular values of
its R factor (tall QR, then an SVD of the small square factor: rank-revealing, unlike QR alone);
directions below ``drop`` are discarded, as they carry nothing (an invariant subspace was found),
and random directions take their place, so the iteration divides by no vanishing norm and goes
on into the unexplored rest of the space. Normalising a direction of singular value s magnifies
the round-off left along the basis by ||x|| / s, so the new columns are projected once more
(CGS2 again) and re-orthonormalised.
"""

from __future__ import annotations

import torch

from ._probes import gaussian


def norms(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Euclidean norms along ``dim``, scaled by the largest entry first: a plain sum of squares
    underflows to 0 for entries below 1e-154 (and overflows above 1e154), which would read as a
    breakdown or a converged residual for an operator of that scale."""
    if x.shape[dim] == 0:
        return x.sum(dim=dim)  # zeros
    plain = x.norm(dim=dim)
    # the plain norms are exact unless a sum of squares left the normal range; the scaled
    # recomputation makes two temporaries of x's size (page faults on a CPU) and is rarely needed
    safe = torch.finfo(x.dtype).tiny ** 0.5 / torch.finfo(x.dtype).eps
    if bool(((plain > safe) & (plain < 1 / safe)).all()):
        return plain
    top = x.abs().amax(dim=dim, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
    return (x / top).norm(dim=dim) * top.squeeze(dim)


def orthogonalise(x: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - q q^T x, q^T x) by CGS2, for q with orthonormal columns; the coefficients of both
    passes are summed, so x = q coef + result holds to round-off."""
    coef = q.T @ x
    x = x - q @ coef
    again = q.T @ x
    return x - q @ again, coef + again


def project_out(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x minus its component in span(q) (orthonormal columns)."""
    return orthogonalise(x, q)[0] if q.shape[1] else x


def orthonormal_extension(q: torch.Tensor, x: torch.Tensor, width: int, drop: float,
                          gen: torch.Generator) -> torch.Tensor:
    """Orthonormal columns orthogonal to q: first the directions of x (already projected against
    q) whose singular values exceed ``drop``, largest first, then random ones, ``width`` in all,
    or fewer where the space has less room left than that."""
    n = q.shape[0]
    width = min(width, n - q.shape[1])
    if width <= 0:
        return x.new_zeros(n, 0)
    kept = x.new_zeros(n, 0)
    if x.shape[1]:
        y, r = torch.linalg.qr(x)
        left, sigma, _ = torch.linalg.svd(r)
        kept = (y @ left)[:, sigma > drop][:, :width]
    fill = gaussian(n, width - kept.shape[1], gen, x.device)
    # the second projection: the kept directions' magnified round-off, the fill's whole component
    y = project_out(torch.cat([kept, fill], dim=1), q)
    # Householder QR keeps the kept directions' span first and makes the fill orthogonal to them
    y, _ = torch.linalg.qr(y)
    return y

"""Orthonormal blocks and random probes, the small pieces every Krylov method here shares."""

from __future__ import annotations

import torch

_DEPENDENT = 1e-10  # a column this small relative to its norm before projection adds no direction


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def rademacher(n: int, b: int, gen: torch.Generator, device) -> torch.Tensor:
    """Random signs, drawn on the CPU so a seed gives the same probes on every device."""
    return (torch.randint(0, 2, (n, b), generator=gen, dtype=torch.int8).to(torch.float64) * 2 - 1).to(device)


def gaussian(n: int, b: int, gen: torch.Generator, device) -> torch.Tensor:
    return torch.randn(n, b, generator=gen, dtype=torch.float64).to(device)


def project_out(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """x minus its component in span(q) (orthonormal columns), twice: one classical Gram-Schmidt
    pass loses orthogonality in proportion to the condition of x, the second restores it."""
    if q.shape[1] == 0:
        return x
    for _ in range(2):
        x = x - q @ (q.T @ x)
    return x


def extend(q: torch.Tensor, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Orthonormal columns spanning x's directions outside span(q), as many as x has columns and
    room remains. A direction x lacks (x rank-deficient there: an invariant subspace was found,
    the operator is low-rank, or eigenvalues repeat) is replaced by a random one, so Krylov
    methods go on into the rest of the space instead of dividing by zero."""
    n = q.shape[0]
    room = n - q.shape[1]
    x = x[:, :room]
    scale = x.norm(dim=0)
    for _ in range(3):
        x = project_out(x, q)
        y, r = torch.linalg.qr(x)
        bad = r.diagonal().abs() <= _DEPENDENT * scale.clamp(min=torch.finfo(torch.float64).tiny)
        if not bool(bad.any()):
            return y
        fresh = gaussian(n, x.shape[1], gen, x.device)
        x = torch.where(bad[None, :], fresh, x)
        scale = torch.where(bad, fresh.norm(dim=0), scale)
    return y[:, ~bad]

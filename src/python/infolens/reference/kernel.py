"""Reference kernel-matrix primitives: K @ V, sum K^2 and dense rows, chunked in torch.

The same function as the native engines (docs/NATIVE_ABI.md): K_ij is the product over factors
(kind, points) of gaussian exp(-||x-y||_2^2) with ||x-y||^2 = ||x||^2 + ||y||^2 - 2 x.y clamped
at 0 and exactly 0 on the diagonal, laplacian exp(-||x-y||_1), or linear x.y, with bandwidths
already folded into the points. Kernel values are formed in the points' dtype, products and
sums in float64. Agreement with the native engines is to rounding, not bit for bit: the order
of the sums differs.
"""

from __future__ import annotations

import torch

KINDS = ("gaussian", "laplacian", "linear")

# Kernel entries per row block: 16 MiB of float32 on the CPU (smaller blocks make the matrix
# products too thin to run at speed), more on a GPU to fill it.
_BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


def _check(factors) -> tuple[int, torch.device]:
    if not factors:
        raise ValueError("factors must hold at least one (kind, points) pair")
    n, device = factors[0][1].shape[0], factors[0][1].device
    for kind, x in factors:
        if kind not in KINDS:
            raise ValueError(f"factors: unknown kernel kind {kind!r} (expected one of {KINDS})")
        if x.ndim != 2 or x.shape[0] != n:
            raise ValueError(f"factors: points must all have shape [{n}, d], got {tuple(x.shape)}")
    return n, device


def _norms(factors) -> list:
    """Squared row norms of the gaussian factors (None for the others), computed once."""
    return [(x * x).sum(1) if kind == "gaussian" else None for kind, x in factors]


def kernel_rows(factors, start: int, stop: int, norms=None) -> torch.Tensor:
    """Rows [start, stop) of K, in the points' dtype."""
    norms = _norms(factors) if norms is None else norms
    block = None
    for (kind, x), norm in zip(factors, norms):
        rows = x[start:stop]
        if kind == "gaussian":
            d2 = norm[start:stop, None] + norm[None, :] - 2 * (rows @ x.T)
            d2.clamp_(min=0)
            idx = torch.arange(stop - start, device=x.device)
            d2[idx, idx + start] = 0
            values = d2.neg_().exp_()
        elif kind == "laplacian":
            values = torch.cdist(rows, x, p=1).neg_().exp_()
        else:
            values = rows @ x.T
        block = values if block is None else block.mul_(values)
    return block


def _row_blocks(factors):
    n, device = _check(factors)
    step = max(1, _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS["cpu"]) // n)
    norms = _norms(factors)
    for start in range(0, n, step):
        stop = min(n, start + step)
        yield start, stop, kernel_rows(factors, start, stop, norms)


def kernel_matmul(factors, v: torch.Tensor) -> torch.Tensor:
    """K @ v for v [n, b], in float64."""
    v = v.to(torch.float64)
    out = torch.empty_like(v)
    for start, stop, rows in _row_blocks(factors):
        torch.matmul(rows.to(torch.float64), v, out=out[start:stop])
    return out


def kernel_sum_squares(factors) -> float:
    """sum_ij K_ij^2 in float64."""
    return float(sum(rows.to(torch.float64).square().sum() for _, _, rows in _row_blocks(factors)))


def kernel_dense(factors) -> torch.Tensor:
    """The whole K [n, n] in float64: the exact path's matrix (O(n^2) memory by design)."""
    n, device = _check(factors)
    out = torch.empty(n, n, dtype=torch.float64, device=device)
    for start, stop, rows in _row_blocks(factors):
        out[start:stop] = rows
    return out

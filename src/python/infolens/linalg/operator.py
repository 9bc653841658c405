"""Symmetric linear operators applied to blocks of vectors.

An operator is anything that maps a block V [n, b] to A @ V for a symmetric A: a kernel matrix
formed tile by tile, a Hessian or Gauss-Newton matrix through batched Hessian-vector products, or
a dense matrix in tests. One application costs a pass over the data however many columns it
carries, so every method here asks for as few applications as it can, each as wide as it can,
and ``Operator`` counts both (``calls``, ``columns``) for callers and benchmarks to report.

The wrapper is also the one place where the contract is enforced: the function receives a
contiguous float64 block on the operator's device and must return a finite [n, b] block; a wrong
shape or a NaN is an error here, not a silently wrong eigenvalue later.
"""

from __future__ import annotations

import torch

from .._arrays import _to_tensor
from ._checks import positive_int

_SYMMETRY = 1e-6  # relative asymmetry refused in a dense matrix: far above round-off in float32


class Operator:
    """A symmetric linear operator on R^n: ``op(V [n, b]) -> A @ V`` as float64 on ``device``.

    ``matmul`` maps a contiguous float64 [n, b] block on ``device`` to A @ V ([n, b], any float
    dtype). ``calls`` and ``columns`` count applications and the columns they carried. ``dtype``:
    the precision the products are computed in (float64 unless said otherwise), which the Krylov
    methods may store their bases in. ``any_layout``: set by an operator whose matmul takes
    blocks of any strides (then not made contiguous first).
    """

    def __init__(self, matmul, n: int, device="cpu", dtype=torch.float64):
        self._matmul = matmul
        self.n = positive_int(n, "n")
        self.device = torch.device(device)
        self.dtype = dtype
        self.any_layout = False
        self.calls = 0
        self.columns = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.ndim != 2 or v.shape[0] != self.n:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"v must be a block of shape [{self.n}, b], got {shape}")
        v = v.to(self.device, torch.float64)
        # a transposed block (Lanczos keeps its vectors as rows) is passed on as it is to an
        # operator that reads any layout: the copy would cost as much as a cheap product
        out = self._matmul(v if self.any_layout else v.contiguous())
        out = torch.as_tensor(out)
        if tuple(out.shape) != tuple(v.shape):
            raise ValueError(f"the operator's matmul returned shape {tuple(out.shape)} for a block of shape "
                             f"{tuple(v.shape)}")
        out = out.to(self.device, torch.float64)
        # NaN and inf reach the extremes; no temporary of the block's size (as abs() would make)
        flat = out.T if out.T.is_contiguous() else out  # the extremes read in memory order
        if out.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(flat))).all()):
            raise ValueError("the operator's matmul returned NaN or infinite values")
        self.calls += 1
        self.columns += v.shape[1]
        return out

    def __repr__(self) -> str:
        return f"Operator(n={self.n}, device={self.device}, calls={self.calls}, columns={self.columns})"


def as_operator(a) -> Operator:
    """``a`` itself if it is an ``Operator``; a dense symmetric matrix [n, n] (tensor, array,
    anything array-like) wrapped as one, in float64 on its own device."""
    if isinstance(a, Operator):
        return a
    t = _to_tensor(a, "A").to(torch.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] == 0:
        raise ValueError(f"A must be an Operator or a square matrix, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("A contains NaN or infinite values")
    size = float(t.abs().max())
    if float((t - t.T).abs().max()) > _SYMMETRY * size:
        raise ValueError("A must be symmetric (the Krylov methods here assume A = A^T)")
    return Operator(lambda v: t @ v, t.shape[0], t.device)

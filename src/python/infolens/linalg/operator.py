"""Symmetric operators applied to blocks of vectors.

An operator is anything that maps a block V [n, b] to A @ V. Blocks, not single vectors: one
application of a kernel matrix or a Hessian costs a pass over the data however many columns it
carries, so every algorithm here asks for as few applications as it can, each as wide as it can.
``Operator`` counts both, so that callers and benchmarks can report them.
"""

from __future__ import annotations

import torch


class Operator:
    """A symmetric linear operator on R^n: ``op(V [n, b]) -> A @ V``, float64 on ``device``."""

    def __init__(self, matmul, n: int, device="cpu"):
        if int(n) < 1:
            raise ValueError(f"n must be a positive integer, got {n}")
        self._matmul = matmul
        self.n = int(n)
        self.device = torch.device(device)
        self.calls = 0
        self.columns = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.ndim != 2 or v.shape[0] != self.n:
            raise ValueError(f"v must be a block of shape [{self.n}, b], got {tuple(v.shape)}")
        out = self._matmul(v.to(self.device, torch.float64))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(v.shape):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the operator returned {shape} for a block of shape {tuple(v.shape)}")
        self.calls += 1
        self.columns += v.shape[1]
        return out.to(torch.float64)


def as_operator(a) -> Operator:
    """An ``Operator`` as is, or a dense symmetric matrix [n, n] (tensor or array) wrapped as one."""
    if isinstance(a, Operator):
        return a
    t = torch.as_tensor(a).to(torch.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"A must be an Operator or a square matrix, got shape {tuple(t.shape)}")
    return Operator(lambda v: t @ v, t.shape[0], t.device)

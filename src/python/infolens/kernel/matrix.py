"""A kernel matrix that is never stored, on whichever engine serves its device.

``KernelMatrix(factors, backend)`` takes the factors of a Hadamard product, each ``(kind,
points)`` with the bandwidth already folded into the points (see ``kernels.py``), and offers
``matmul(V)`` (K @ V, float64), ``sum_squares()``, ``trace()`` and ``dense()``. The native
engines (C++ with OpenMP; CUDA on the caller's stream) and the torch reference compute the same
function (docs/NATIVE_ABI.md).
"""

from __future__ import annotations

import math

import torch

from .. import _backend
from ..reference import kernel as reference


class KernelMatrix:
    def __init__(self, factors: list[tuple[str, torch.Tensor]], backend: str = "auto"):
        n = factors[0][1].shape[0]
        self.factors = [(kind, x.contiguous()) for kind, x in factors]
        self.n = n
        self.device = factors[0][1].device
        self.dtype = factors[0][1].dtype
        self.backend = _backend.resolve(backend, self.device, "kernel")
        self._cpu = None
        if self.backend == "native" and self.device.type == "cpu":
            self._cpu = _backend._native.KernelMatrix([(kind, x.numpy()) for kind, x in self.factors])

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """K @ v for v [n, b]; float64 on the matrix's device."""
        v = v.to(self.device, torch.float64).contiguous()
        if self.backend == "reference":
            return reference.kernel_matmul(self.factors, v)
        out = torch.empty_like(v)
        if self._cpu is not None:
            self._cpu.matmul(v.numpy(), out.numpy())
        else:
            _backend._native_cuda.kernel_matmul(*self._cuda_args(), v.data_ptr(), v.shape[1], out.data_ptr(),
                                                *_backend.cuda_launch(self.device))
        return out

    def sum_squares(self) -> float:
        """sum_ij K_ij^2, float64."""
        if self.backend == "reference":
            return reference.kernel_sum_squares(self.factors)
        if self._cpu is not None:
            return self._cpu.sum_squares()
        out = torch.empty(1, dtype=torch.float64, device=self.device)
        _backend._native_cuda.kernel_sum_squares(*self._cuda_args(), out.data_ptr(),
                                                 *_backend.cuda_launch(self.device))
        return float(out)

    def diagonal(self) -> torch.Tensor:
        """K_ii = prod_f k_f(x_i, x_i), float64: ones for unit-diagonal kernels."""
        diag = torch.ones(self.n, dtype=torch.float64, device=self.device)
        for kind, x in self.factors:
            if kind == "linear":
                diag *= x.to(torch.float64).square().sum(1)
        return diag

    def trace(self) -> float:
        return float(self.diagonal().sum())

    def dense(self) -> torch.Tensor:
        """K [n, n] in float64 (the exact path: O(n^2) memory by design)."""
        return reference.kernel_dense([(kind, x.to(torch.float64)) for kind, x in self.factors])

    def features(self) -> torch.Tensor | None:
        """An explicit feature map Phi [n, D] with K = Phi Phi^T, float64, when every factor is linear
        (a Hadamard product of linear kernels has the row-wise Kronecker product as features)."""
        if any(kind != "linear" for kind, _ in self.factors):
            return None
        phi = self.factors[0][1].to(torch.float64)
        for _, x in self.factors[1:]:
            phi = (phi[:, :, None] * x.to(torch.float64)[:, None, :]).reshape(self.n, -1)
        return phi

    def feature_dim(self) -> int | None:
        if any(kind != "linear" for kind, _ in self.factors):
            return None
        return math.prod(x.shape[1] for _, x in self.factors)

    def _cuda_args(self):
        kinds = [kind for kind, _ in self.factors]
        pointers = [x.data_ptr() for _, x in self.factors]
        dims = [x.shape[1] for _, x in self.factors]
        dtype = _backend.CUDA_DTYPES[self.dtype]
        return kinds, pointers, dims, self.n, dtype


class PrecomputedMatrix:
    """A kernel matrix the user computed, [n, n] float64: same interface, dense by nature."""

    backend = "precomputed"

    def __init__(self, k: torch.Tensor):
        self.k = k.to(torch.float64)
        self.n = k.shape[0]
        self.device = k.device
        self.factors = []

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        return self.k @ v.to(self.device, torch.float64)

    def sum_squares(self) -> float:
        return float(self.k.square().sum())

    def diagonal(self) -> torch.Tensor:
        return self.k.diagonal().clone()

    def trace(self) -> float:
        return float(self.k.diagonal().sum())

    def dense(self) -> torch.Tensor:
        return self.k.clone()

    def features(self):
        return None

    def feature_dim(self):
        return None

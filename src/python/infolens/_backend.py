"""Choosing an engine and wrapping it behind one small interface.

``backend="auto" | "native" | "reference"`` on every estimator, or the environment variable
``INFOLENS_BACKEND`` when the argument is left at ``"auto"``. ``auto`` runs the native CPU engine
for CPU tensors, the CUDA engine for CUDA tensors where it implements the primitive (kernel
matrices so far; kNN comes with its CUDA engine), and the reference path where no native engine
serves the input (a missing module is said once in a warning). ``native`` insists and fails
loudly where it cannot run.

An index answers two questions about a fixed point set under one metric key (docs/NATIVE_ABI.md):
``knn(k, queries=None) -> (keys [M, k], idx [M, k])`` and
``count(radius [M], strict, queries=None) -> counts [M]``.
"""

from __future__ import annotations

import os
import warnings

import torch

from .reference import ReferenceIndex

BACKENDS = ("auto", "native", "reference")

try:
    from . import _native
except ImportError as exc:  # a build without the extension, or a broken one
    _native = None
    _native_error = str(exc)
else:
    _native_error = ""

try:
    from . import _native_cuda
except ImportError:  # built without a CUDA compiler
    _native_cuda = None

# Which primitives the CUDA module implements, by the function that marks them.
_CUDA_PRIMITIVES = {"kernel": "kernel_matmul"}
_LABELS = {"knn": "kNN", "kernel": "kernel-matrix"}

_warned = False


def native_available() -> bool:
    return _native is not None


def cuda_native(primitive: str) -> bool:
    """True when the CUDA module is built, implements ``primitive`` and sees a device."""
    marker = _CUDA_PRIMITIVES.get(primitive)
    return (_native_cuda is not None and marker is not None and hasattr(_native_cuda, marker)
            and _native_cuda.device_count() > 0)


def resolve(backend: str, device: torch.device, primitive: str = "knn") -> str:
    """The engine that runs ``primitive`` ("knn" or "kernel") on ``device``: "native" or "reference"."""
    if backend == "auto":
        backend = os.environ.get("INFOLENS_BACKEND", "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"INFOLENS_BACKEND must be one of {BACKENDS}, got {backend!r}")
    elif backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    if device.type != "cpu":
        if device.type == "cuda" and cuda_native(primitive):
            return "native"
        if backend == "native":
            raise ValueError(f"backend='native' has no {_LABELS[primitive]} engine for {device.type} tensors "
                             "in this build; use backend='auto'")
        return "reference"
    if _native is None:
        if backend == "native":
            raise ImportError(f"backend='native' but infolens._native could not be imported: {_native_error}")
        global _warned
        if not _warned:
            warnings.warn(f"infolens: native engine unavailable ({_native_error}); using the torch reference path",
                          RuntimeWarning, stacklevel=3)
            _warned = True
        return "reference"
    return "native"


class NativeIndex:
    """The C++ engine's ``Index`` over CPU tensors; outputs are allocated here and filled in place."""

    backend = "native"

    def __init__(self, points: torch.Tensor, p: float, algorithm: str = "auto"):
        self.points = points
        self.p = p
        self._index = _native.Index(points.numpy(), algorithm)
        self.algorithm = self._index.algorithm

    @property
    def n(self) -> int:
        return self.points.shape[0]

    def knn(self, k: int, queries: torch.Tensor | None = None):
        m = self.n if queries is None else queries.shape[0]
        keys = torch.empty(m, k, dtype=self.points.dtype)
        idx = torch.empty(m, k, dtype=torch.int64)
        q = None if queries is None else queries.numpy()
        self._index.knn(k, self.p, keys.numpy(), idx.numpy(), q)
        return keys, idx

    def count(self, radius: torch.Tensor, strict: bool, queries: torch.Tensor | None = None):
        m = self.n if queries is None else queries.shape[0]
        out = torch.empty(m, dtype=torch.int64)
        q = None if queries is None else queries.numpy()
        self._index.count(radius.contiguous().numpy(), self.p, bool(strict), out.numpy(), q)
        return out


def make_index(points: torch.Tensor, p: float, backend: str = "auto", algorithm: str = "auto"):
    """An index over ``points`` [N, d] (contiguous float32/float64) for the metric key of order p."""
    engine = resolve(backend, points.device)
    if engine == "native":
        return NativeIndex(points, p, algorithm)
    if algorithm not in ("auto", "brute"):
        raise ValueError(f"algorithm={algorithm!r} is a native-engine choice; the reference path is brute force")
    return ReferenceIndex(points, p)

"""Choosing an engine and wrapping it behind one small interface.

``backend="auto" | "native" | "reference"`` on every estimator, or the environment variable
``INFOLENS_BACKEND`` when the argument is left at ``"auto"``. ``auto`` runs the native CPU engine
for CPU tensors, the CUDA engine for CUDA tensors where it implements the primitive (kNN search
and radius counts, kernel matrices), and the reference path where no native engine serves the
input (a missing module is said once in a warning). ``native`` insists and fails loudly where it
cannot run.

An index answers two questions about a fixed point set under one metric key (docs/NATIVE_ABI.md):
``knn(k, queries=None) -> (keys [M, k], idx [M, k])`` and
``count(radius [M], strict, queries=None) -> counts [M]``. Three kinds: ``NativeIndex`` (the C++
engine, CPU tensors), ``CudaIndex`` (the CUDA engine, CUDA tensors, outputs on the points' device
and the work on that device's current stream) and ``ReferenceIndex`` (torch, any device).

The CUDA engine serves p = 2 and p = inf and k <= ``knn_max_k`` (64); a ``CudaIndex`` answers
other orders p, and larger k, through ``ReferenceIndex`` on the same device, which computes the
same function (same keys, same (key, index) order), so an estimate does not depend on the path.
Estimates report ``backend="native"`` from either native engine (the input's device says which)
and ``"reference"`` where the torch path did the work (a ``CudaIndex`` for p not in {2, inf}, or
for more than 2^16 features).
"""

from __future__ import annotations

import math
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
_CUDA_PRIMITIVES = {"knn": "knn", "kernel": "kernel_matmul", "softmax_ce_ggn": "softmax_ce_ggn"}
_LABELS = {"knn": "kNN", "kernel": "kernel-matrix", "softmax_ce_ggn": "softmax cross-entropy head"}

_warned = False


def native_available() -> bool:
    return _native is not None


def cuda_native(primitive: str) -> bool:
    """True when the CUDA module is built, implements ``primitive`` and sees a device."""
    marker = _CUDA_PRIMITIVES.get(primitive)
    return (_native_cuda is not None and marker is not None and hasattr(_native_cuda, marker)
            and _native_cuda.device_count() > 0)


def resolve(backend: str, device: torch.device, primitive: str = "knn") -> str:
    """The engine that runs ``primitive`` ("knn", "kernel", "softmax_ce_ggn") on ``device``: "native" or "reference"."""
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
        self.points = points = points.contiguous()  # the C++ Index takes C-contiguous rows (and copies them)
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
        q = None if queries is None else queries.contiguous().numpy()
        self._index.knn(k, self.p, keys.numpy(), idx.numpy(), q)
        return keys, idx

    def count(self, radius: torch.Tensor, strict: bool, queries: torch.Tensor | None = None):
        m = self.n if queries is None else queries.shape[0]
        out = torch.empty(m, dtype=torch.int64)
        q = None if queries is None else queries.contiguous().numpy()
        self._index.count(radius.contiguous().numpy(), self.p, bool(strict), out.numpy(), q)
        return out


CUDA_DTYPES = {torch.float32: "float32", torch.float64: "float64"}  # as the CUDA bindings name them


def cuda_launch(device: torch.device) -> tuple[int, int]:
    """(the device's current stream, the device's index): where every CUDA engine call is enqueued."""
    return torch.cuda.current_stream(device).cuda_stream, device.index or 0  # CUDA tensors' devices carry an index
_MAX_LD = 1 << 20  # the largest row stride the CUDA bindings take
_MAX_DIM = 1 << 16  # and the most features


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(t, its row stride in elements) when the CUDA engine can read ``t`` [R, d] in place: unit
    column stride and a row stride >= d, e.g. a block of columns of a wider contiguous matrix.
    Otherwise (t.contiguous(), d)."""
    rows, dim = t.shape
    if t.stride(1) == 1 or dim == 1:
        ld = dim if rows == 1 else t.stride(0)
        if dim <= ld <= _MAX_LD:
            return t, ld
    return t.contiguous(), dim


def _pointer(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class CudaIndex:
    """The CUDA engine's kNN search and radius counts over a CUDA tensor, same interface as
    ``NativeIndex``: outputs are allocated by torch on the points' device and filled in place, the
    work enqueued on that device's current stream (no host synchronisation).

    ``points`` [N, d] float32/float64 may be a block of columns of a wider matrix (unit column
    stride, row stride >= d): it is read in place, not copied, and so may queries be. The index
    keeps a reference, not a copy: change the tensor and the answers change.

    The CUDA kernels serve p = 2 and p = inf and k <= ``_native_cuda.knn_max_k``. Other orders p,
    and larger k, are answered by ``ReferenceIndex`` over the same tensor on the same device (the
    torch path): it computes the same keys and the same (key, index) order, so every estimate is
    the same function whichever path answered. ``backend`` says "reference" when p (or d > 2^16)
    sends every question there.

    ``algorithm``: "brute" (the fused brute-force kernels), "grid" (cells over <= 3 columns: the
    same answers from fewer pairs in low dimension, d <= ``knn_grid_max_dim`` and k <=
    ``knn_grid_max_k``, brute force past those or where the grid cannot help; one host
    synchronisation per call sizes the grid) or "auto" (brute force, until the grid path is
    measured on a GPU).
    """

    ALGORITHMS = ("auto", "brute", "grid")

    def __init__(self, points: torch.Tensor, p: float, algorithm: str = "auto"):
        if algorithm not in self.ALGORITHMS:
            raise ValueError(f"algorithm={algorithm!r} is not served on CUDA tensors; the CUDA engine takes "
                             f"algorithm in {self.ALGORITHMS}")
        if algorithm == "grid" and not hasattr(_native_cuda, "knn_grid"):
            raise ValueError("algorithm='grid': this build of infolens._native_cuda has no grid path")
        self.algorithm = "grid" if algorithm == "grid" else "brute"
        if points.dtype not in CUDA_DTYPES:
            raise TypeError(f"points must be float32 or float64, got {points.dtype}")
        self.points, self._ld = _rows(points)
        self.p = p
        self.device = points.device
        self._dtype = CUDA_DTYPES[points.dtype]
        # The kernels serve the max-norm and the Euclidean key (up to 2^16 features); other L^p keys
        # go to the torch path.
        self._served = (p == 2.0 or p == math.inf) and points.shape[1] <= _MAX_DIM
        self.backend = "native" if self._served else "reference"
        self._reference = None

    @property
    def n(self) -> int:
        return self.points.shape[0]

    def _fallback(self) -> ReferenceIndex:
        if self._reference is None:
            self._reference = ReferenceIndex(self.points, self.p)
        return self._reference

    def _queries(self, queries: torch.Tensor | None) -> tuple[torch.Tensor | None, int, int]:
        """(queries as the engine reads them, their number, their row stride); None is the self-join."""
        if queries is None:
            return None, self.n, self.points.shape[1]
        if queries.device != self.device:
            raise ValueError(f"queries must be on the points' device {self.device}, got {queries.device}")
        if queries.dtype != self.points.dtype:
            raise TypeError(f"queries must have the points' dtype {self.points.dtype}, got {queries.dtype}")
        if queries.ndim != 2 or queries.shape[1] != self.points.shape[1]:
            raise ValueError(f"queries must be [M, {self.points.shape[1]}], got shape {tuple(queries.shape)}")
        q, ldq = _rows(queries)
        return q, q.shape[0], ldq

    def knn(self, k: int, queries: torch.Tensor | None = None):
        if not self._served or k > _native_cuda.knn_max_k:
            # p outside {2, inf} or k past the fused kernels' limit: the torch path, same function.
            return self._fallback().knn(k, queries)
        q, m, ldq = self._queries(queries)
        keys = torch.empty(m, k, dtype=self.points.dtype, device=self.device)
        idx = torch.empty(m, k, dtype=torch.int64, device=self.device)
        if m == 0:
            return keys, idx
        search = _native_cuda.knn_grid if self.algorithm == "grid" else _native_cuda.knn
        search(self.points.data_ptr(), self.n, self.points.shape[1], self._ld, _pointer(q), m, ldq,
               self._dtype, self.p, k, keys.data_ptr(), idx.data_ptr(), *cuda_launch(self.device))
        return keys, idx

    def count(self, radius: torch.Tensor, strict: bool, queries: torch.Tensor | None = None):
        if not self._served:
            return self._fallback().count(radius, strict, queries)
        q, m, ldq = self._queries(queries)
        radius = radius.to(self.device, self.points.dtype).contiguous()
        if radius.shape != (m,):
            raise ValueError(f"radius must have shape ({m},), got {tuple(radius.shape)}")
        out = torch.empty(m, dtype=torch.int64, device=self.device)
        if m == 0:
            return out
        count = _native_cuda.knn_count_grid if self.algorithm == "grid" else _native_cuda.knn_count
        count(self.points.data_ptr(), self.n, self.points.shape[1], self._ld, _pointer(q), m, ldq, self._dtype,
              self.p, radius.data_ptr(), bool(strict), out.data_ptr(), *cuda_launch(self.device))
        return out


def make_index(points: torch.Tensor, p: float, backend: str = "auto", algorithm: str = "auto"):
    """An index over ``points`` [N, d] (float32/float64) for the metric key of order p.

    CPU points should be contiguous (the C++ engine copies what is not); CUDA points may be a
    column block of a wider matrix, read in place."""
    engine = resolve(backend, points.device)
    if engine == "native":
        if points.device.type == "cuda":
            return CudaIndex(points, p, algorithm)
        return NativeIndex(points, p, algorithm)
    if algorithm not in ("auto", "brute"):
        raise ValueError(f"algorithm={algorithm!r} is a native-engine choice; the reference path is brute force")
    return ReferenceIndex(points, p)

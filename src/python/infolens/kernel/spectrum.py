"""The spectrum of a normalised kernel matrix, exact where affordable and matrix-free beyond.

Every kernel estimator is a spectral sum sum_i f(lambda_i) of a symmetric PSD operator
A = c * diag(s) K diag(s) (c = 1 / tr K and s = 1 for the matrix-based entropies; the degree
normalisation for diffusion spectral entropy). Three ways to get at it:

* ``exact``: A in float64 and all its eigenvalues (torch.linalg.eigvalsh): O(N^2) memory,
  O(N^3) time, chosen automatically up to N = 6,000 on a CPU and 20,000 on a GPU.
* ``features``: linear kernels (linear, cosine, and Hadamard products of them, whose features are
  row-wise Kronecker products): the nonzero eigenvalues of Phi Phi^T equal those of Phi^T Phi, a
  D x D matrix, O(N D^2) and exact. Chosen when D <= min(N, 4096).
* ``matrix-free``: block Lanczos for the top ``rank`` eigenpairs, then stochastic Lanczos
  quadrature on the deflated remainder (infolens.linalg); one run gives every spectral sum, each
  with a standard error from the spread of the probes. Plain SLQ errs by 0.1-0.2 nats on kernel
  spectra; deflating the top of the spectrum, which carries most of the mass, is what fixes it.

Round-off: eigenvalues (and quadrature nodes) below N * eps * lambda_max, eps the float64 unit
round-off, are set to 0; otherwise sums of lambda^a with a < 1 pick up the ~1e-17 noise floor.
Kernel values formed in float32 (float32 inputs on the native engines) perturb eigenvalues by
about 1e-7 lambda_max: pass float64 data where orders a < 1 need the small eigenvalues.
"""

from __future__ import annotations

import torch

from .. import linalg

METHODS = ("auto", "exact", "features", "matrix-free")
EXACT_LIMIT = {"cpu": 6000, "cuda": 20000}
FEATURES_LIMIT = 4096
DEFAULT_RANK, DEFAULT_PROBES, DEFAULT_STEPS = 100, 32, 30
_EPS = torch.finfo(torch.float64).eps


class Spectrum:
    """Eigenvalues of A (``exact``, ``features``) or their quadrature (``matrix-free``)."""

    def __init__(self, n: int, path: str, eigenvalues=None, quadrature=None, controls=(), details=None):
        self.n = n
        self.controls = list(controls)  # (g, exact tr g(A)): the quadrature's control variates
        self.path = path
        self.eigenvalues = eigenvalues  # float64, descending, noise floor zeroed
        self.quadrature = quadrature
        self.details = dict(details or {}, path=path)

    @property
    def lambda_max(self) -> float:
        if self.eigenvalues is not None:
            return float(self.eigenvalues[0]) if self.eigenvalues.numel() else 0.0
        top = self.quadrature.top
        return float(top[0]) if top.numel() else float(self.quadrature.nodes.max().clamp(min=0))

    def _floor(self) -> float:
        return self.n * _EPS * self.lambda_max

    def sum(self, f) -> tuple[float, float]:
        """(sum_i f(lambda_i), standard error) for an elementwise f with f(0) = 0."""
        floor = self._floor()

        def g(lam):
            keep = lam > floor
            return torch.where(keep, f(torch.where(keep, lam, torch.ones_like(lam))), torch.zeros_like(lam))

        if self.eigenvalues is not None:
            return float(g(self.eigenvalues).sum()), 0.0
        return self.quadrature.trace(g, controls=self.controls)


def choose(method: str, matrix, weighted: bool = False) -> str:
    """The path ``method`` names, or the one "auto" picks for this matrix."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dim = None if weighted else matrix.feature_dim()
    if method == "features" and dim is None:
        raise ValueError("method='features' needs linear or cosine kernels (an explicit feature map)")
    if method != "auto":
        return method
    if dim is not None and dim <= min(matrix.n, FEATURES_LIMIT):
        return "features"
    return "exact" if matrix.n <= EXACT_LIMIT.get(matrix.device.type, EXACT_LIMIT["cpu"]) else "matrix-free"


def _sorted(values: torch.Tensor) -> torch.Tensor:
    values = values.to("cpu", torch.float64).flip(0)
    values = torch.where(values > values[0] * values.numel() * _EPS, values, torch.zeros_like(values))
    return values


def compute(matrix, *, scale: float, weights: torch.Tensor | None = None, method: str = "auto",
            rank: int | None = None, probes: int = DEFAULT_PROBES, steps: int = DEFAULT_STEPS,
            seed: int = 0) -> Spectrum:
    """The spectrum of A = scale * diag(weights) K diag(weights)."""
    path = choose(method, matrix, weights is not None)
    n = matrix.n
    details = {"backend": matrix.backend}
    if path == "features":
        phi = matrix.features()
        return Spectrum(n, path, _sorted(torch.linalg.eigvalsh(phi.T @ phi) * scale), details=details)
    if path == "exact":
        a = matrix.dense()
        if weights is not None:
            a *= weights[:, None] * weights[None, :]
        a *= scale
        return Spectrum(n, path, _sorted(torch.linalg.eigvalsh(a)), details=details)

    def apply(v: torch.Tensor) -> torch.Tensor:
        if weights is None:
            return matrix.matmul(v) * scale
        return matrix.matmul(v * weights[:, None]) * (weights[:, None] * scale)

    op = linalg.Operator(apply, n, device=matrix.device)
    rank = min(DEFAULT_RANK if rank is None else int(rank), n)
    if rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank}")
    top = linalg.top_eigenpairs(op, rank, tol=1e-5, seed=seed)
    quad = linalg.spectral_quadrature(op, probes=probes, steps=steps, deflate=top, seed=seed + 1)
    details.update(rank=rank, probes=probes, steps=steps, operator_calls=op.calls,
                   top_converged=bool(top.converged))
    # tr A and, unweighted, tr A^2 = scale^2 sum_ij K_ij^2 (one streaming pass) are known exactly
    diagonal = matrix.diagonal() * (1.0 if weights is None else weights.square())
    controls = [(lambda lam: lam, float(diagonal.sum()) * scale)]
    if weights is None:
        controls.append((lambda lam: lam.square(), matrix.sum_squares() * scale ** 2))
    return Spectrum(n, path, quadrature=quad, controls=controls, details=details)

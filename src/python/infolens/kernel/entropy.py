"""Matrix-based Renyi entropies (Sanchez Giraldo, Rao & Principe 2014) and what is built on them.

For samples x_1..x_N and a kernel k, A = K / tr K (K_ij = k(x_i, x_j)) has eigenvalues lambda_i
summing to 1, and

    S_alpha(A) = log(sum_i lambda_i^alpha) / (1 - alpha),   alpha > 0, alpha != 1,
    S_1(A)     = -sum_i lambda_i log lambda_i               (von Neumann, the alpha -> 1 limit),
    S_inf(A)   = -log lambda_max.

The joint entropy of several variables uses the Hadamard product of their kernels,
A_joint = (K_1 o K_2 o ...) / tr(...), each variable keeping its own bandwidth; mutual
information is S(A) + S(B) - S(A, B) and total correlation sum_l S(A_l) - S(A_joint)
(Yu et al. 2019). Natural logarithms (nats) unless ``base=`` says otherwise; the original papers
use log2 (``base=2``).

alpha = 2 has an exact streaming form, S_2 = -log(sum_ij K_ij^2 / (tr K)^2): on the
matrix-free path it is computed that way (one O(N^2 d) pass, O(N) memory), exactly.
The standard errors of matrix-free values come from the spread of the quadrature probes (delta
method through the log); exact paths report 0.
"""

from __future__ import annotations

import math
import numbers

import torch

from .._arrays import as_samples, common_dtype
from ..result import Estimate, units_of
from ..trust.trusted import Design, trusted
from . import spectrum as spectra
from .kernels import check_kernel, check_sigma, factor, merged
from .matrix import KernelMatrix, PrecomputedMatrix

_SOLVER_DEFAULTS = dict(method="auto", rank=None, probes=spectra.DEFAULT_PROBES, steps=spectra.DEFAULT_STEPS)


# ---- inputs ------------------------------------------------------------------------------------

def check_alpha(alpha, name: str = "alpha") -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{name} must be a number > 0 (math.inf allowed), got {alpha!r}")
    alpha = float(alpha)
    if not alpha > 0:  # also refuses NaN
        raise ValueError(f"{name} must be > 0 (math.inf allowed), got {alpha}")
    return alpha


def _alphas(alpha) -> tuple[list[float], bool]:
    if isinstance(alpha, (list, tuple)):
        if not alpha:
            raise ValueError("alpha must be a number or a non-empty list of numbers")
        return [check_alpha(a) for a in alpha], True
    return [check_alpha(alpha)], False


def _precomputed(k, name: str) -> torch.Tensor:
    k = as_samples(k, name).to(torch.float64)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} must be a square kernel matrix with kernel='precomputed', got shape {tuple(k.shape)}")
    if not torch.allclose(k, k.T, rtol=1e-10, atol=1e-12 * float(k.abs().max())):
        raise ValueError(f"{name} must be symmetric with kernel='precomputed'")
    if not float(k.diagonal().sum()) > 0:
        raise ValueError(f"{name} must have a positive trace (a positive semi-definite kernel matrix)")
    return k


class Variables:
    """The kernel factor of each variable, with its bandwidth settled once, so that marginal and
    joint matrices share it."""

    def __init__(self, xs, names, kernel: str, sigma, seed: int, backend: str):
        self.kernel = kernel
        self.backend = backend
        if kernel == "precomputed":
            self.parts = [_precomputed(x, name) for x, name in zip(xs, names)]
            self.sigmas = [None] * len(xs)
        else:
            check_kernel(kernel)
            sigmas = list(sigma) if isinstance(sigma, (list, tuple)) else [sigma] * len(xs)
            if len(sigmas) != len(xs):
                raise ValueError(f"sigma must be one value or one per variable ({len(xs)}), got {len(sigmas)}")
            samples = common_dtype(*[as_samples(x, name) for x, name in zip(xs, names)])
            self.parts, self.sigmas = [], []
            for t, s, name in zip(samples, sigmas, names):
                kind, points, used = factor(t, kernel, check_sigma(s), name=name, seed=seed, backend=backend)
                self.parts.append((kind, points))
                self.sigmas.append(used)
        points = [p if kernel == "precomputed" else p[1] for p in self.parts]
        n, device = points[0].shape[0], points[0].device
        for t, name in zip(points[1:], names[1:]):
            if t.shape[0] != n:
                raise ValueError(f"{names[0]} and {name} must have the same number of samples, got {n} and {t.shape[0]}")
            if t.device != device:
                raise ValueError(f"{names[0]} and {name} must be on the same device, got {device} and {t.device}")
        if n < 2:
            raise ValueError(f"{names[0]} must have at least 2 samples for a kernel entropy, got {n}")
        self.n = n

    def matrix(self, which: list[int]):
        """The (Hadamard-joint) kernel matrix of the variables ``which``."""
        if self.kernel == "precomputed":
            k = self.parts[which[0]]
            for i in which[1:]:
                k = k * self.parts[i]
            return PrecomputedMatrix(k)
        return KernelMatrix(merged([self.parts[i] for i in which]), self.backend)


def _as_list(x, name: str):
    if isinstance(x, (list, tuple)) and x and not isinstance(x[0], numbers.Number):
        return list(x), [f"{name}[{i}]" for i in range(len(x))]
    return [x], [name]


# ---- the entropies ------------------------------------------------------------------------------

def renyi(spec: spectra.Spectrum, alpha: float) -> tuple[float, float]:
    """(S_alpha, standard error) in nats from a spectrum of a trace-normalised matrix."""
    if alpha == math.inf:
        return -math.log(spec.lambda_max), 0.0
    if alpha == 1.0:
        return spec.sum(lambda lam: -lam * torch.log(lam))
    total, se = spec.sum(lambda lam: lam.pow(alpha))
    total = max(total, 1e-300)
    return math.log(total) / (1.0 - alpha), se / (total * abs(1.0 - alpha))


def entropies(variables: Variables, which: list[int], alphas: list[float], solver: dict, seed: int):
    """[(value, stderr)] per alpha, and details, for the joint matrix of ``which``."""
    matrix = variables.matrix(which)
    trace = matrix.trace()
    path = spectra.choose(solver["method"], matrix)
    streamed = {a for a in alphas if a == 2.0 and path == "matrix-free"}
    details = {"kernel": variables.kernel, "sigma": [variables.sigmas[i] for i in which], "path": path,
               "backend": matrix.backend}
    out = {}
    if streamed:
        out[2.0] = (-math.log(matrix.sum_squares() / trace ** 2), 0.0)
    if len(streamed) < len(alphas):
        spec = spectra.compute(matrix, scale=1.0 / trace, seed=seed, **solver)
        details.update(spec.details)
        for a in alphas:
            if a not in out:
                out[a] = renyi(spec, a)
    return [out[a] for a in alphas], details


def _estimate(value: float, se: float, base, n: int, method: str, details: dict) -> Estimate:
    scale, units = units_of(base)
    return Estimate(value / scale, stderr=se / scale, n=n, method=method, units=units,
                    backend=details.get("backend", ""), details=details)


def solver_options(method, rank, probes, steps) -> dict:
    for name, value in (("probes", probes), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1):
        raise ValueError(f"rank must be a positive integer or None, got {rank!r}")
    return dict(method=method, rank=rank, probes=int(probes), steps=int(steps))


def _name(alpha: float) -> str:
    return "von Neumann" if alpha == 1.0 else f"renyi alpha={alpha:g}"


@trusted(Design((("x",),), compress=("x",)))
def matrix_entropy(x, alpha=1.0, *, kernel: str = "gaussian", sigma="silverman", base=None,
                   method: str = "auto", rank: int | None = None, probes: int = spectra.DEFAULT_PROBES,
                   steps: int = spectra.DEFAULT_STEPS, seed: int = 0, backend: str = "auto"):
    """Matrix-based Renyi entropy S_alpha(K / tr K) of the samples ``x``.

    ``x``: samples [N, d] (1-D: one feature), or a list of such arrays for their joint entropy
    (Hadamard product of their kernels), or with ``kernel="precomputed"`` a symmetric PSD kernel
    matrix [N, N] (or a list of them). ``alpha``: a number > 0, ``math.inf``, or a list of them,
    which returns a list of Estimates from one spectrum. ``kernel``: gaussian, laplacian, linear,
    cosine, precomputed; ``sigma``: a bandwidth or a rule (see ``infolens.kernel.kernels``).
    ``method``: "auto", "exact", "features" (linear kernels) or "matrix-free", with ``rank``
    (deflated eigenpairs), ``probes`` and ``steps`` for the latter.
    """
    alphas, many = _alphas(alpha)
    xs, names = _as_list(x, "x")
    variables = Variables(xs, names, kernel, sigma, seed, backend)
    values, details = entropies(variables, list(range(len(xs))), alphas, solver_options(method, rank, probes, steps), seed)
    out = [_estimate(v, se, base, variables.n, f"matrix {_name(a)}", details) for a, (v, se) in zip(alphas, values)]
    return out if many else out[0]


def _information(xs, names, alpha, kernel, sigma, base, solver, seed, backend, method_name):
    """sum_l S(A_l) - S(A_joint) with the bandwidths shared: MI for two variables, TC for more."""
    alpha = check_alpha(alpha)
    variables = Variables(xs, names, kernel, sigma, seed, backend)
    marginals = [entropies(variables, [i], [alpha], solver, seed) for i in range(len(xs))]
    [(joint, joint_se)], joint_details = entropies(variables, list(range(len(xs))), [alpha], solver, seed)
    value = sum(values[0][0] for values, _ in marginals) - joint
    se = math.sqrt(sum(values[0][1] ** 2 for values, _ in marginals) + joint_se ** 2)
    details = dict(joint_details, marginals=[d for _, d in marginals])
    return _estimate(value, se, base, variables.n, f"matrix {method_name} ({_name(alpha)})", details)


@trusted(Design((("x", "y"),), null=("shuffle", "y"), compress=("x", "y"), permutation_floor=1000,
         hypothesis="the independence of x and y"))
def matrix_mutual_info(x, y, alpha=1.0, *, kernel: str = "gaussian", sigma="silverman", base=None,
                       method: str = "auto", rank: int | None = None, probes: int = spectra.DEFAULT_PROBES,
                       steps: int = spectra.DEFAULT_STEPS, seed: int = 0, backend: str = "auto") -> Estimate:
    """Matrix-based mutual information S(A) + S(B) - S(A, B), the joint by Hadamard product.

    For unit-diagonal kernels 0 <= I <= min(S(A), S(B)). Arguments as ``matrix_entropy``;
    ``sigma`` may be a pair (one per variable).
    """
    return _information([x, y], ["x", "y"], alpha, kernel, sigma, base, solver_options(method, rank, probes, steps),
                        seed, backend, "mutual information")


@trusted(Design((("xs",),), null=("shuffle-each", "xs"), compress=("xs",), permutation_floor=1000,
         hypothesis="the mutual independence of the variables"))
def total_correlation(xs, alpha=1.0, *, kernel: str = "gaussian", sigma="silverman", base=None,
                      method: str = "auto", rank: int | None = None, probes: int = spectra.DEFAULT_PROBES,
                      steps: int = spectra.DEFAULT_STEPS, seed: int = 0, backend: str = "auto") -> Estimate:
    """Matrix-based total correlation sum_l S(A_l) - S(A_1 o ... o A_L) of a list of variables."""
    if not isinstance(xs, (list, tuple)) or len(xs) < 2:
        raise ValueError("xs must be a list of at least two variables")
    return _information(list(xs), [f"xs[{i}]" for i in range(len(xs))], alpha, kernel, sigma, base,
                        solver_options(method, rank, probes, steps), seed, backend, "total correlation")


@trusted(Design((("x",),), compress=("x",)))
def vendi_score(x, q=1.0, *, kernel: str = "cosine", sigma="median", method: str = "auto",
                rank: int | None = None, probes: int = spectra.DEFAULT_PROBES, steps: int = spectra.DEFAULT_STEPS,
                seed: int = 0, backend: str = "auto") -> Estimate:
    """Vendi score (Friedman & Dieng 2023): exp(S_q(K / tr K)), an effective number of distinct samples.

    With a unit-diagonal kernel (cosine, gaussian, laplacian, or a precomputed K with k(x, x) = 1)
    K / tr K = K / N, the paper's definition; ``q=math.inf`` gives 1 / lambda_max. Defaults to the
    cosine kernel (the package's ``score_X`` on row-normalised embeddings), exact through the
    d x d feature matrix. Ranges from 1 (all samples alike) to N (all orthogonal).
    """
    q = check_alpha(q, "q")
    variables = Variables([x], ["x"], kernel, sigma, seed, backend)
    [(value, se)], details = entropies(variables, [0], [q], solver_options(method, rank, probes, steps), seed)
    score = math.exp(value)
    return Estimate(score, stderr=score * se, n=variables.n, method=f"vendi q={q:g}", units="samples",
                    backend=details.get("backend", ""), details=details)

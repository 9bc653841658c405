"""Kernels and bandwidths: turning a variable into the factor the engines multiply.

Kernels (each variable gets its own; a joint kernel is the Hadamard product of the variables'):

* ``gaussian``  exp(-||x - y||^2 / (2 sigma^2))   unit diagonal
* ``laplacian`` exp(-||x - y||_1 / sigma)          unit diagonal (L1, as scikit-learn's)
* ``linear``    x . y
* ``cosine``    x . y / (||x|| ||y||)              unit diagonal

Bandwidth rules (``sigma=``), measured in the kernel's own norm (L2 for gaussian, L1 for
laplacian):

* ``"silverman"``: standardise every feature to unit variance, then sigma = sqrt(d) N^(-1/(4+d))
  (Yu et al.'s rule with sigma0 = 1, as in the matrix-based Renyi entropy literature);
* ``"median"``: the median distance between distinct samples, over a seeded subsample of at most
  1,000 samples (499,500 pairs), ignoring zero distances;
* ``"knn"``: the mean distance from each sample to its k-th nearest neighbour (k = 10 or N - 1),
  computed exactly by the kNN engine, ignoring zero distances;
* a positive number: that sigma.

A rule that finds no nonzero distance (every sample identical) returns sigma = 1: every kernel
value is then 1 whatever sigma is.
"""

from __future__ import annotations

import math

import torch

KERNELS = ("gaussian", "laplacian", "linear", "cosine")
RULES = ("silverman", "median", "knn")
_MEDIAN_SAMPLES = 1000
KNN_K = 10


def check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS} or 'precomputed', got {kernel!r}")
    return kernel


def check_sigma(sigma):
    if isinstance(sigma, str):
        if sigma not in RULES:
            raise ValueError(f"sigma must be a positive number or one of {RULES}, got {sigma!r}")
        return sigma
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"sigma must be a positive number or one of {RULES}, got {sigma!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    return value


def standardised(x: torch.Tensor) -> torch.Tensor:
    std = x.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature adds no distance
    return (x - x.mean(dim=0)) / std


def _positive_mean_or_one(values: torch.Tensor, median: bool) -> float:
    values = values[values > 0]
    if values.numel() == 0:
        return 1.0
    return float(values.median() if median else values.mean())


def bandwidth(x: torch.Tensor, rule, p: float, seed: int, backend: str) -> float:
    """sigma for samples ``x`` [N, d] under ``rule``, distances in the L^p norm."""
    if not isinstance(rule, str):
        return float(rule)
    n, d = x.shape
    if rule == "silverman":
        return math.sqrt(d) * n ** (-1.0 / (4 + d))
    if n < 2:
        return 1.0
    if rule == "median":
        gen = torch.Generator().manual_seed(int(seed))
        pick = torch.randperm(n, generator=gen)[:_MEDIAN_SAMPLES].to(x.device)
        sub = x[pick].to(torch.float64)
        dist = torch.cdist(sub, sub, p=p)
        upper = torch.triu_indices(sub.shape[0], sub.shape[0], offset=1, device=x.device)
        return _positive_mean_or_one(dist[upper[0], upper[1]], median=True)
    from ..knn.search import nearest_neighbours  # the kNN engine, exact
    dist, _ = nearest_neighbours(x, min(KNN_K, n - 1), metric=p, backend=backend)
    return _positive_mean_or_one(dist[:, -1].to(torch.float64), median=False)


def factor(x: torch.Tensor, kernel: str, sigma, *, name: str, seed: int, backend: str):
    """(kind, points with the bandwidth folded in, sigma used or None) for one variable."""
    if kernel == "cosine":
        norms = x.to(torch.float64).norm(dim=1)
        if bool((norms == 0).any()):
            raise ValueError(f"{name} has an all-zero row: the cosine kernel is undefined there")
        return "linear", (x / norms[:, None].to(x.dtype)).contiguous(), None
    if kernel == "linear":
        return "linear", x, None
    if sigma == "silverman":
        x = standardised(x)
    p = 2.0 if kernel == "gaussian" else 1.0
    s = bandwidth(x, sigma, p, seed, backend)
    scale = s * math.sqrt(2.0) if kernel == "gaussian" else s
    points = (x / scale).contiguous()
    _check_range(points, kernel, name)
    return kernel, points, s


def _check_range(points: torch.Tensor, kind: str, name: str):
    """The engines form |x|^2 + |y|^2 - 2 x.y (gaussian) or sum_c |x_c - y_c| (laplacian) in the
    points' dtype; where that overflows a kernel value would be silently wrong, so say so."""
    size = points.abs().sum(dim=1) if kind == "laplacian" else points.square().sum(dim=1)
    if not bool(torch.isfinite(4 * size).all()):
        raise ValueError(f"{name}: values too large for {kind} kernel arithmetic in {points.dtype} once divided "
                         "by the bandwidth; pass float64 data or a larger sigma")


def merged(factors: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """One factor per exponential kind: exp(-a) exp(-b) = exp(-(a + b)), so gaussian factors
    concatenate their features (as do laplacian ones) and the engines form one exponential."""
    out = []
    for kind in ("gaussian", "laplacian"):
        parts = [x for k, x in factors if k == kind]
        if parts:
            out.append((kind, torch.cat(parts, dim=1).contiguous() if len(parts) > 1 else parts[0]))
    return out + [(k, x) for k, x in factors if k == "linear"]

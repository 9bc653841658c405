"""What every kNN estimator shares: metric names, unit-ball volumes, argument checks, and the
neighbour search that also reports ties.

Tie rule (the project's contract, docs/NATIVE_ABI.md): neighbours are ordered by (distance,
sample index), counts use the exact strictness each estimator defines, and nothing is jittered
unless the caller asks for it. A sample's k-th neighbour distance is *tied* when another point
lies at exactly that distance, i.e. the (k+1)-th distance equals the k-th; the share of such
samples is reported with every estimate.
"""

from __future__ import annotations

import math
import numbers

import torch

from .. import _backend
from .._arrays import as_samples, jittered


def metric_order(metric) -> float:
    """The p of the L^p key: "max" -> inf, "euclidean" -> 2, or a number p >= 1."""
    if isinstance(metric, str):
        named = {"max": math.inf, "chebyshev": math.inf, "inf": math.inf, "euclidean": 2.0,
                 "manhattan": 1.0}
        if metric.lower() not in named:
            raise ValueError(f"metric must be 'max', 'euclidean', 'manhattan' or a number p >= 1, got {metric!r}")
        return named[metric.lower()]
    if isinstance(metric, numbers.Real) and not isinstance(metric, bool) and metric >= 1:
        return float(metric)
    raise ValueError(f"metric must be 'max', 'euclidean', 'manhattan' or a number p >= 1, got {metric!r}")


def log_unit_ball(d: int, p: float) -> float:
    """log volume of the unit L^p ball in d dimensions."""
    if p == math.inf:
        return d * math.log(2.0)
    return d * math.log(2.0 * math.gamma(1.0 + 1.0 / p)) - math.lgamma(1.0 + d / p)


def log_distance(keys: torch.Tensor, p: float) -> torch.Tensor:
    """log of the L^p distance behind each key, in float64."""
    logs = keys.to(torch.float64).log()
    return logs if p == math.inf else logs / p


def check_k(k, n: int, name: str, *, spare: int = 1) -> int:
    """k must be a positive integer with at least k + spare samples in ``name``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n < k + spare:
        raise ValueError(f"k={k} needs at least {k + spare} samples in {name}, got {n}")
    return int(k)


def prepare(x, name: str, jitter: float, seed: int) -> torch.Tensor:
    return jittered(as_samples(x, name), jitter, seed)


def digamma(t) -> torch.Tensor:
    return torch.special.digamma(torch.as_tensor(t, dtype=torch.float64))


def kth_neighbours(index, k: int, queries: torch.Tensor | None = None):
    """(k-th keys [M], neighbour indices [M, k], tied [M] bool) from one search of k+1 neighbours.

    Asking one neighbour more than needed is how ties are seen; where the point set has no
    (k+1)-th point, the k-th distance cannot be shared and nothing is tied.
    """
    spare = index.n - (1 if queries is None else 0) > k
    keys, idx = index.knn(k + 1 if spare else k, queries)
    kth = keys[:, k - 1].contiguous()
    tied = keys[:, k] == kth if spare else torch.zeros_like(kth, dtype=torch.bool)
    return kth, idx[:, :k], tied


def build_index(points: torch.Tensor, p: float, backend: str, algorithm: str = "auto"):
    return _backend.make_index(points, p, backend, algorithm)

"""Exact k-nearest-neighbour search, the primitive under every kNN estimator, for direct use."""

from __future__ import annotations

import math

import torch

from .._arrays import as_samples
from ._common import build_index, check_k, metric_order


def nearest_neighbours(x, k: int, *, queries=None, metric="max", backend: str = "auto",
                       algorithm: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Distances [M, k] and indices [M, k] of each query's k nearest samples of ``x``.

    Without ``queries`` this is the self-join over ``x``: each sample's own row is excluded.
    Neighbours are sorted by (distance, index), so ties go to the smaller sample index.
    ``algorithm`` ("auto", "kdtree", "brute", "sorted" for 1-D) forces the native engine's search.
    """
    p = metric_order(metric)
    X = as_samples(x, "x")
    if queries is None:
        check_k(k, X.shape[0], "x")
        Q = None
    else:
        check_k(k, X.shape[0], "x", spare=0)
        Q = as_samples(queries, "queries").to(X.dtype)
        if Q.shape[1] != X.shape[1]:
            raise ValueError(f"queries must have {X.shape[1]} features like x, got {Q.shape[1]}")
        if Q.device != X.device:
            raise ValueError(f"queries and x must be on the same device, got {Q.device} and {X.device}")
    keys, idx = build_index(X, p, backend, algorithm).knn(k, Q)
    if p == math.inf:
        return keys, idx
    return (keys.sqrt() if p == 2 else keys.pow(1.0 / p)), idx

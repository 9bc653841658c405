"""Rows of an estimator's arguments: taking subsets of them together, and orders to take them in.

Subsamples are drawn without replacement. Resampling with replacement (the bootstrap) puts exact
copies of points into a sample, which collapses kNN distances to zero and biases every kNN
estimator; a subset of distinct rows is a true sample of the same distribution at a smaller size.
Where an argument holds class labels, orders are stratified: every class is spread evenly
through the order, so any stride or prefix of it keeps the class proportions (Ross's estimator
needs k + 1 samples of every class in every block).
"""

from __future__ import annotations

import numpy as np
import torch

from .._arrays import is_discrete


def as_rows(a):
    """A tensor (or a list of tensors) holding the same rows as ``a``; dtypes are left to the estimator."""
    if isinstance(a, torch.Tensor):
        return a.detach()
    if isinstance(a, (list, tuple)) and a and not np.isscalar(a[0]) and np.ndim(a[0]) > 0:
        return [as_rows(e) for e in a]
    arr = np.asarray(a)
    return torch.from_numpy(arr if arr.flags.c_contiguous else np.ascontiguousarray(arr))


def n_rows(a) -> int:
    return n_rows(a[0]) if isinstance(a, list) else int(a.shape[0])


def take(a, rows: torch.Tensor, square: bool = False):
    """The rows ``rows`` of ``a`` (of each array of a list); both axes of a square kernel matrix."""
    if isinstance(a, list):
        return [take(e, rows, square) for e in a]
    idx = rows.to(a.device)
    out = a.index_select(0, idx)
    return out.index_select(1, idx) if square else out


def labels_of(arrays) -> torch.Tensor | None:
    """The first argument that holds class labels (integers or booleans, one per row), if any."""
    for a in arrays:
        if isinstance(a, torch.Tensor) and a.ndim == 1 and is_discrete(a):
            return a
    return None


def order(n: int, labels: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """A random order of 0..n-1; with labels, each class spread evenly through it."""
    if labels is None:
        return torch.randperm(n, generator=gen)
    _, codes, counts = torch.unique(labels.cpu(), return_inverse=True, return_counts=True)
    shuffled = torch.randperm(n, generator=gen)
    # Rank of each row within its class, in shuffled order; its position in the order is that rank
    # over the class size, so every class advances through the order at the same pace.
    by_class = shuffled[torch.argsort(codes[shuffled], stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.float64)
    rank[by_class] = (torch.arange(n) - starts.repeat_interleave(counts)).to(torch.float64)
    key = (rank + torch.rand(n, generator=gen, dtype=torch.float64)) / counts[codes].to(torch.float64)
    return torch.argsort(key)


def blocks(n: int, parts: int, labels: torch.Tensor | None, gen: torch.Generator) -> list[torch.Tensor]:
    """``parts`` disjoint random blocks covering 0..n-1, sizes differing by at most one."""
    rows = order(n, labels, gen)
    return [rows[b::parts] for b in range(parts)]

"""Reference kNN search and radius counts: chunked brute force in torch.

Keys are built one coordinate at a time with separate torch operations (no fused multiply-add),
in the input dtype, so they equal the native engine's keys bit for bit for p = inf and p = 2.
Neighbours are ordered by (key, sample index): a stable sort over index-ordered columns keeps the
smaller index first among equal keys, and merging a running best list (all of smaller index) in
front of each new chunk preserves that.
"""

from __future__ import annotations

import math

import torch

# Elements of one [queries x points] key block. On the CPU 2 MiB in float64, so the
# per-coordinate passes stay in cache (32 MiB blocks ran 4x slower, bound by memory traffic);
# on a GPU large enough to hide kernel launches.
_BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}


def pair_keys(queries: torch.Tensor, points: torch.Tensor, p: float) -> torch.Tensor:
    """Key matrix [m, n] between two sample blocks, built coordinate by coordinate, in place."""
    keys = torch.zeros(queries.shape[0], points.shape[0], dtype=points.dtype, device=points.device)
    diff = torch.empty_like(keys)
    for c in range(points.shape[1]):
        torch.sub(queries[:, c, None], points[None, :, c], out=diff)
        if p == math.inf:
            torch.maximum(keys, diff.abs_(), out=keys)
        elif p == 2.0:
            keys.add_(diff.mul_(diff))
        else:
            keys.add_(diff.abs_().pow_(p))
    return keys


def _blocks(n_queries: int, n_points: int, device: torch.device) -> tuple[int, int]:
    point_block = min(n_points, 8192)
    elements = _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS["cpu"])
    query_block = max(1, min(n_queries, elements // max(point_block, 1)))
    return query_block, point_block


class ReferenceIndex:
    """Same interface as the native `Index` wrapper, in pure torch, on the points' device."""

    backend = "reference"
    algorithm = "brute"

    def __init__(self, points: torch.Tensor, p: float):
        self.points = points
        self.p = p

    @property
    def n(self) -> int:
        return self.points.shape[0]

    def knn(self, k: int, queries: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The k smallest keys per query, ascending by (key, index); the self-join excludes j == i."""
        self_join = queries is None
        q_all = self.points if self_join else queries
        # The self-join keeps one spare candidate: dropping j == i afterwards leaves exactly k.
        width = k + 1 if self_join else k
        m, n = q_all.shape[0], self.n
        qb, pb = _blocks(m, n, self.points.device)
        out_keys = torch.empty(m, k, dtype=self.points.dtype, device=self.points.device)
        out_idx = torch.empty(m, k, dtype=torch.int64, device=self.points.device)
        for q0 in range(0, m, qb):
            q = q_all[q0 : q0 + qb]
            best_keys = q.new_empty(q.shape[0], 0)
            best_idx = torch.empty(q.shape[0], 0, dtype=torch.int64, device=q.device)
            for p0 in range(0, n, pb):
                keys, order = _smallest(pair_keys(q, self.points[p0 : p0 + pb], self.p), width)
                order = order + p0
                merged = torch.cat([best_keys, keys], dim=1)
                merged_idx = torch.cat([best_idx, order], dim=1)
                merged, pos = torch.sort(merged, dim=1, stable=True)
                best_keys = merged[:, :width]
                best_idx = torch.gather(merged_idx, 1, pos[:, :width])
            if self_join:
                best_keys, best_idx = _drop_self(best_keys, best_idx, q0, k)
            out_keys[q0 : q0 + qb] = best_keys
            out_idx[q0 : q0 + qb] = best_idx
        return out_keys, out_idx

    def count(self, radius: torch.Tensor, strict: bool, queries: torch.Tensor | None = None) -> torch.Tensor:
        """#{j : key < radius} (strict) or <= (non-strict) per query; the self-join excludes j == i."""
        self_join = queries is None
        q_all = self.points if self_join else queries
        m, n = q_all.shape[0], self.n
        qb, pb = _blocks(m, n, self.points.device)
        counts = torch.zeros(m, dtype=torch.int64, device=self.points.device)
        for q0 in range(0, m, qb):
            q = q_all[q0 : q0 + qb]
            r = radius[q0 : q0 + qb, None]
            for p0 in range(0, n, pb):
                keys = pair_keys(q, self.points[p0 : p0 + pb], self.p)
                inside = keys < r if strict else keys <= r
                counts[q0 : q0 + qb] += inside.sum(dim=1)
        if self_join:
            # Point i's key to itself is exactly 0: remove it where the predicate admitted it.
            zero = torch.zeros_like(radius)
            counts -= (zero < radius if strict else zero <= radius).to(torch.int64)
        return counts


def _smallest(keys: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `width` smallest (key, column) per row, ascending, ties to the smaller column.

    topk finds the width-th key T; a row with exactly `width` keys <= T keeps those, in column
    order, and a stable sort by key finishes it. Rows where T is tied past the cut (lattice data)
    take the full stable sort instead.
    """
    width = min(width, keys.shape[1])
    cut = torch.topk(keys, width, dim=1, largest=False, sorted=False).values.amax(dim=1, keepdim=True)
    below = keys <= cut
    exact = below.sum(dim=1) == width
    out_keys = keys.new_empty(keys.shape[0], width)
    out_cols = torch.empty(keys.shape[0], width, dtype=torch.int64, device=keys.device)
    if bool(exact.any()):
        cols = below[exact].nonzero()[:, 1].view(-1, width)  # row-major: columns ascend per row
        picked, order = torch.sort(torch.gather(keys[exact], 1, cols), dim=1, stable=True)
        out_keys[exact], out_cols[exact] = picked, torch.gather(cols, 1, order)
    if not bool(exact.all()):
        tied, order = torch.sort(keys[~exact], dim=1, stable=True)
        out_keys[~exact], out_cols[~exact] = tied[:, :width], order[:, :width]
    return out_keys, out_cols


def _drop_self(keys: torch.Tensor, idx: torch.Tensor, first_row: int, k: int):
    """From k+1 candidates per row, drop the row's own index (or the last one if it is absent)."""
    rows = torch.arange(first_row, first_row + keys.shape[0], device=idx.device)
    is_self = idx == rows[:, None]
    # Self is absent only when k+1 exact duplicates of smaller index precede it: then drop the last.
    absent = ~is_self.any(dim=1)
    is_self[absent, -1] = True
    keep = ~is_self
    return keys[keep].view(-1, k), idx[keep].view(-1, k)

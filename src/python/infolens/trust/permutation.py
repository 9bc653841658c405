"""Permutation tests: rearrangements of the samples under the null hypothesis, and the p-value.

p = (1 + #{b : T_b >= T}) / (1 + B) for B rearrangements: exact (valid at every sample size) for
any statistic T, and never 0. The statistic is the estimator itself, so large values speak
against the null. The rearrangements:

* "shuffle" (independence of x and y): the rows of y permuted, x kept.
* "shuffle-each" (mutual independence of a list of variables): every variable after the first
  permuted on its own.
* "pool" (P = Q, two samples): both samples pooled, shuffled and split at the original sizes.
* "local" (conditional independence of x and y given z; Runge 2018): y is permuted only among
  samples whose z are close, so the dependence of y on z survives while any further dependence
  on x is broken. Each sample draws, in random order, among its ``LOCAL_NEIGHBOURS`` nearest
  neighbours in z (itself included) one not yet drawn by another, in rounds; a sample left
  without a free neighbour takes one of them anyway.
"""

from __future__ import annotations

import torch

from .samples import n_rows, take

LOCAL_NEIGHBOURS = 5


def p_values(observed: list[float], null: list[list[float]]) -> list[float]:
    """One p-value per output from the observed statistics and B rows of null statistics."""
    b = len(null)
    return [(1 + sum(row[o] >= observed[o] for row in null)) / (1 + b) for o in range(len(observed))]


def local_neighbours(z: torch.Tensor, backend: str) -> torch.Tensor:
    """[n, LOCAL_NEIGHBOURS] rows: each sample itself, then its nearest neighbours in z (max-norm)."""
    from ..knn.search import nearest_neighbours  # the estimator layer, imported when used
    k = min(LOCAL_NEIGHBOURS - 1, z.shape[0] - 1)
    _, idx = nearest_neighbours(z, k, backend=backend)
    idx = torch.as_tensor(idx).cpu().long()
    return torch.cat([torch.arange(z.shape[0])[:, None], idx], 1)


def local_permutation(neighbours: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each sample, the row whose y it takes: a near-permutation within z-neighbourhoods."""
    n, width = neighbours.shape
    candidates = neighbours.gather(1, torch.argsort(torch.rand(n, width, generator=gen), 1))
    taken_by = torch.full((n,), -1, dtype=torch.long)
    used = torch.zeros(n, dtype=torch.bool)
    for r in range(width):
        rows = (taken_by < 0).nonzero().squeeze(1)
        wanted = candidates[rows, r]
        free = ~used[wanted]
        rows, wanted = rows[free], wanted[free]
        # Several rows may want one sample: a random priority decides, the others try again.
        order = torch.randperm(rows.numel(), generator=gen)
        rows, wanted = rows[order], wanted[order]
        first = torch.full((n,), rows.numel(), dtype=torch.long).scatter_reduce(
            0, wanted, torch.arange(rows.numel()), "amin")
        winners = first[wanted] == torch.arange(rows.numel())
        taken_by[rows[winners]] = wanted[winners]
        used[wanted[winners]] = True
    left = (taken_by < 0).nonzero().squeeze(1)
    pick = torch.randint(width, (left.numel(),), generator=gen)
    taken_by[left] = candidates[left, pick]
    return taken_by


def rearrange(null: tuple, args: dict, gen: torch.Generator, cache: dict) -> dict:
    """The arguments with their rows rearranged as the null hypothesis allows."""
    kind = null[0]
    out = dict(args)
    if kind == "shuffle":
        name = null[1]
        out[name] = take(args[name], torch.randperm(n_rows(args[name]), generator=gen))
    elif kind == "shuffle-each":
        name = null[1]
        first, *rest = args[name]
        out[name] = [first] + [take(v, torch.randperm(n_rows(v), generator=gen)) for v in rest]
    elif kind == "pool":
        p_name, q_name = null[1], null[2]
        p, q = args[p_name], args[q_name]
        pooled = torch.cat([p, q.to(p.dtype)], 0)
        rows = torch.randperm(pooled.shape[0], generator=gen)
        out[p_name] = take(pooled, rows[: p.shape[0]])
        out[q_name] = take(pooled, rows[p.shape[0]:])
    elif kind == "local":
        name, given = null[1], null[2]
        if "neighbours" not in cache:
            cache["neighbours"] = local_neighbours(args[given], args.get("backend", "auto"))
        out[name] = take(args[name], local_permutation(cache["neighbours"], gen))
    else:  # pragma: no cover - designs are fixed in code
        raise AssertionError(kind)
    return out

"""Trace estimators: Hutchinson and Hutch++, each a few operator calls on wide blocks.

Hutchinson: tr A = E[z^T A z] for Rademacher z; b probes in ONE call, standard error from their
spread (variance per probe 2 (||A||_F^2 - sum_i A_ii^2)).
Hutch++ (Meyer, Musco, Musco & Woodruff 2021): with m applications, sketch Q = orth(A S) from
m/3 random columns, take tr(Q^T A Q) exactly and Hutchinson with m/3 probes on the rest,
(I - QQ^T) A (I - QQ^T). Three calls; error O(1/m) instead of O(1/sqrt(m)) for PSD A, and exact
when rank(A) <= m/3.
"""

from __future__ import annotations

import math

import torch

from ._blocks import generator, project_out, rademacher
from .lanczos import _positive_int
from .operator import as_operator


def _mean_and_error(samples: torch.Tensor) -> tuple[float, float]:
    se = float(samples.std(correction=1)) / math.sqrt(samples.numel()) if samples.numel() > 1 else math.nan
    return float(samples.mean()), se


def hutchinson(op, probes: int = 64, seed: int = 0) -> tuple[float, float]:
    """(trace estimate, standard error) from ``probes`` Rademacher probes in one operator call."""
    op = as_operator(op)
    probes = _positive_int(probes, "probes")
    z = rademacher(op.n, probes, generator(seed), op.device)
    return _mean_and_error((z * op(z)).sum(dim=0))


def hutchpp(op, matvecs: int = 96, seed: int = 0) -> tuple[float, float]:
    """(Hutch++ trace estimate, standard error of its Hutchinson part) with ``matvecs`` columns
    in all, over at most three operator calls."""
    op = as_operator(op)
    matvecs = _positive_int(matvecs, "matvecs")
    if matvecs < 3:
        raise ValueError(f"matvecs must be at least 3 for Hutch++, got {matvecs}")
    gen = generator(seed)
    sketch = min(matvecs // 3, op.n)
    q, _ = torch.linalg.qr(op(rademacher(op.n, sketch, gen, op.device)))
    low_rank = float((q * op(q)).sum())
    g = project_out(rademacher(op.n, matvecs - 2 * sketch, gen, op.device), q)
    rest, se = _mean_and_error((g * op(g)).sum(dim=0))
    return low_rank + rest, se

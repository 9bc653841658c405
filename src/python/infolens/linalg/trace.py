"""Trace and diagonal estimators on wide blocks: Hutchinson in one operator call, Hutch++ in two.

Hutchinson: tr A = E[z^T A z] for Rademacher z; ``probes`` of them in one call, the standard
error from their spread. For a fixed A the variance of one probe is 2 (||A||_F^2 - sum_i A_ii^2),
the least of any i.i.d. probe distribution.

Hutch++ (Meyer, Musco, Musco & Woodruff 2021), with m columns in all: Q = orth(A S) for a sketch
S of m/3 random columns; tr A = tr(Q^T A Q) + tr((I - QQ^T) A (I - QQ^T)), the first exactly and
the second by Hutchinson with the other probes, projected off span(Q). For PSD A the error falls
as 1/m instead of 1/sqrt(m), and when rank(A) <= m/3 the remainder is 0 and the result exact.
The paper spends three passes (A S, A Q, A G); A Q and A G need only Q, so here they share one
call: two calls in all, the first m/3 columns wide, the second 2m/3.

Diagonal (Bekas, Kokiopoulou & Saad 2007): diag A = E[z * A z] for Rademacher z, all probes in
one call; entry i of one probe has variance sum_{j != i} A_ij^2, so the standard errors come per
entry from the probes' spread.
"""

from __future__ import annotations

import torch

from . import _probes
from ._checks import positive_int
from ._orthogonal import project_out
from .operator import as_operator


def hutchinson(op, probes: int = 64, seed: int = 0) -> tuple[float, float]:
    """(estimate of tr A, standard error) from ``probes`` Rademacher probes in one operator call."""
    op = as_operator(op)
    probes = positive_int(probes, "probes")
    z = _probes.rademacher(op.n, probes, _probes.generator(seed, _probes.PROBES), op.device)
    return _probes.mean_and_error((z * op(z)).sum(dim=0))


def diagonal(op, probes: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate of diag A [n], standard error per entry [n]) from ``probes`` Rademacher probes
    in one operator call."""
    op = as_operator(op)
    probes = positive_int(probes, "probes")
    z = _probes.rademacher(op.n, probes, _probes.generator(seed, _probes.PROBES), op.device)
    samples = z * op(z)
    if probes < 2:
        return samples[:, 0], torch.full_like(samples[:, 0], float("nan"))
    return samples.mean(dim=1), samples.std(dim=1, correction=1) / probes ** 0.5


def hutchpp(op, matvecs: int = 96, seed: int = 0) -> tuple[float, float]:
    """(Hutch++ estimate of tr A, standard error of its Hutchinson part) with ``matvecs`` operator
    columns in all (at least 3), in two operator calls."""
    op = as_operator(op)
    matvecs = positive_int(matvecs, "matvecs")
    if matvecs < 3:
        raise ValueError(f"matvecs must be at least 3 for Hutch++, got {matvecs}")
    sketch = min(matvecs // 3, op.n)
    s = _probes.rademacher(op.n, sketch, _probes.generator(seed, _probes.SKETCH), op.device)
    # Householder QR: orthonormal columns even where A S is rank-deficient, and any orthonormal
    # Q leaves the estimate unbiased
    q, _ = torch.linalg.qr(op(s))
    g = _probes.rademacher(op.n, matvecs - 2 * sketch, _probes.generator(seed, _probes.PROBES), op.device)
    g = project_out(g, q)
    image = op(torch.cat([q, g], dim=1))
    rest, error = _probes.mean_and_error((g * image[:, sketch:]).sum(dim=0))
    return float((q * image[:, :sketch]).sum()) + rest, error

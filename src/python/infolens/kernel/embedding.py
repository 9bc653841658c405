"""Spectral summaries of an embedding matrix Z [N, d]: RankMe and alpha-ReQ.

* RankMe (Garrido et al. 2023): exp(-sum_k p_k log p_k) with p_k = s_k / sum_j s_j, where s_k
  are the singular values of Z itself (not centred), as in the paper. ``spectrum="covariance"``
  uses the eigenvalues of the centred covariance instead (s_k^2 of the centred Z, as the reptrix
  toolkit does). The paper adds eps = 1e-7 to every p_k; here 0 log 0 = 0 and ``eps=`` is
  available to reproduce it. Ranges from 1 to min(N, d).
* alpha-ReQ (Agrawal et al. 2022): the decay exponent alpha of the centred covariance spectrum,
  lambda_i ~ i^-alpha, by ordinary least squares of log lambda_i on log i over the 1-based ranks
  ``fit_range`` = (first, last) inclusive (reptrix: 10..99, weights 1/i; pass ``weighted=True``).
  Eigenvalues at or below the float64 noise floor are left out of the fit.
"""

from __future__ import annotations

import math

import torch

from .._arrays import as_samples
from ..result import Estimate
from ..trust.trusted import Design, trusted


def _covariance_eigenvalues(z: torch.Tensor) -> torch.Tensor:
    centred = z - z.mean(dim=0)
    s = torch.linalg.svdvals(centred)
    return (s.square() / z.shape[0]).cpu()


@trusted(Design((("z",),), compress=("z",)))
def rank_me(z, *, spectrum: str = "singular", eps: float = 0.0) -> Estimate:
    """RankMe effective rank of embeddings ``z`` [N, d] (see module docstring)."""
    Z = as_samples(z, "z").to(torch.float64)
    if spectrum == "singular":
        values = torch.linalg.svdvals(Z).cpu()
    elif spectrum == "covariance":
        values = _covariance_eigenvalues(Z)
    else:
        raise ValueError(f"spectrum must be 'singular' or 'covariance', got {spectrum!r}")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    total = float(values.sum())
    if total == 0:
        raise ValueError("z has no variance to measure (all singular values are 0)")
    p = values / total + eps
    terms = torch.where(p > 0, -p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    return Estimate(math.exp(float(terms.sum())), stderr=0.0, n=Z.shape[0], method=f"rankme ({spectrum})",
                    units="dimensions", backend="torch")


@trusted(Design((("z",),), compress=("z",)))
def alpha_req(z, *, fit_range=(10, 99), weighted: bool = False) -> Estimate:
    """alpha-ReQ power-law decay exponent of the covariance spectrum of ``z`` [N, d]."""
    Z = as_samples(z, "z").to(torch.float64)
    try:
        first, last = (int(v) for v in fit_range)
    except (TypeError, ValueError):
        raise TypeError(f"fit_range must be a pair of ranks (first, last), got {fit_range!r}") from None
    if not 1 <= first < last:
        raise ValueError(f"fit_range must satisfy 1 <= first < last, got {fit_range!r}")
    lam = _covariance_eigenvalues(Z)
    floor = lam[0] * lam.numel() * torch.finfo(torch.float64).eps
    ranks = torch.arange(1, lam.numel() + 1, dtype=torch.float64)
    keep = (ranks >= first) & (ranks <= last) & (lam > floor)
    if int(keep.sum()) < 3:
        raise ValueError(f"fit_range {fit_range} holds {int(keep.sum())} nonzero eigenvalues of the "
                         f"{lam.numel()} available; alpha-ReQ needs at least 3")
    x, y = torch.log(ranks[keep]), torch.log(lam[keep])
    w = 1.0 / ranks[keep] if weighted else torch.ones_like(x)
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    sw = w.sqrt()[:, None]
    coef = torch.linalg.lstsq(design * sw, y[:, None] * sw).solution[:, 0]
    residual = (y - design @ coef) * w.sqrt()
    dof = max(1, x.numel() - 2)
    cov = torch.linalg.inv((design * sw).T @ (design * sw)) * float(residual.square().sum() / dof)
    return Estimate(-float(coef[0]), stderr=math.sqrt(max(float(cov[0, 0]), 0.0)), n=Z.shape[0],
                    method=f"alpha-ReQ ranks {first}..{last}", units="exponent", backend="torch",
                    details={"fit_range": (first, last), "points": int(keep.sum()), "weighted": weighted})

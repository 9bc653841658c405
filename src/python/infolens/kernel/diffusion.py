"""Diffusion spectral entropy and mutual information (Liao, Liu et al. 2023).

Definitions used here (the reference package ``dse-dsmi`` differs where noted):

* G: Gaussian affinity exp(-||x - y||^2 / (2 sigma^2)) (the package's 1/(sigma sqrt(2 pi))
  factor cancels below). D = diag(G 1). The diffusion operator P = D^-1 G has the eigenvalues
  of its symmetric conjugate M = D^-1/2 G D^-1/2, which lie in [0, 1] because G is positive
  definite, with lambda_max = 1.
* DSE(t) = -sum_i p_i log p_i with p_i = lambda_i^t / sum_j lambda_j^t, in nats unless ``base``
  (the package uses log2 and adds machine epsilon to every p_i; we do not).
* The bandwidth defaults to the median rule, which makes DSE invariant to rescaling the data;
  the package's fixed sigma = 10 is not (it reports about 0 on small-scale data and about log N
  on large-scale data whatever their structure).
* DSMI(X; Y) = sum_y p(y) [ mean over ``repetitions`` random subsets of size n_y of DSE(subset)
  - DSE(x restricted to Y = y) ], for discrete labels Y; subsets share the full data's sigma,
  because DSE depends on N and on sigma, and only the size-matched difference is information.
"""

from __future__ import annotations

import math
import numbers

import torch

from .._arrays import as_labels, as_samples
from ..result import Estimate, units_of
from ..trust.trusted import Design, trusted
from . import spectrum as spectra
from .entropy import solver_options
from .kernels import bandwidth, check_sigma
from .matrix import KernelMatrix


def _check_t(t) -> float:
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (t > 0 and math.isfinite(t)):
        raise ValueError(f"t must be a positive finite number of diffusion steps, got {t!r}")
    return float(t)


def _dse(x: torch.Tensor, sigma: float, t: float, solver: dict, seed: int, backend: str):
    """(DSE in nats, standard error, details) of samples ``x`` at bandwidth ``sigma``."""
    matrix = KernelMatrix([("gaussian", (x / (sigma * math.sqrt(2.0))).contiguous())], backend)
    degrees = matrix.matmul(torch.ones(matrix.n, 1, dtype=torch.float64, device=matrix.device))[:, 0]
    spec = spectra.compute(matrix, scale=1.0, weights=degrees.rsqrt(), seed=seed, **solver)
    mass, mass_se = spec.sum(lambda lam: lam.pow(t))
    plogp, plogp_se = spec.sum(lambda lam: lam.pow(t) * (t * torch.log(lam)))
    value = math.log(mass) - plogp / mass
    # delta method, the two sums' errors taken as independent
    se = math.hypot(mass_se * (1.0 / mass + plogp / mass ** 2), plogp_se / mass)
    return value, se, dict(spec.details, sigma=sigma, t=t)


def _prepare(x, sigma, seed: int, backend: str):
    X = as_samples(x, "x")
    if X.shape[0] < 2:
        raise ValueError(f"x must have at least 2 samples, got {X.shape[0]}")
    rule = check_sigma(sigma)
    if rule == "silverman":
        raise ValueError("sigma='silverman' standardises features, which DSE does not; use 'median', 'knn' or a number")
    return X, bandwidth(X, rule, 2.0, seed, backend)


@trusted(Design((("x",),), compress=("x",)))
def diffusion_spectral_entropy(x, t=1, *, sigma="median", base=None, method: str = "auto",
                               rank: int | None = None, probes: int = spectra.DEFAULT_PROBES,
                               steps: int = spectra.DEFAULT_STEPS, seed: int = 0,
                               backend: str = "auto") -> Estimate:
    """Diffusion spectral entropy of samples ``x`` [N, d] after ``t`` diffusion steps (see module
    docstring for the definition). Ranges from 0 (one connected lump) to log N."""
    t = _check_t(t)
    X, s = _prepare(x, sigma, seed, backend)
    value, se, details = _dse(X, s, t, solver_options(method, rank, probes, steps), seed, backend)
    scale, units = units_of(base)
    return Estimate(value / scale, stderr=se / scale, n=X.shape[0], method=f"diffusion spectral entropy t={t:g}",
                    units=units, backend=details["backend"], details=details)


@trusted(Design((("x", "labels"),), null=("shuffle", "labels"), compress=("x",), permutation_floor=1000,
         hypothesis="the independence of x and the labels"))
def diffusion_spectral_mutual_info(x, labels, t=1, *, sigma="median", repetitions: int = 5, base=None,
                                   method: str = "auto", rank: int | None = None,
                                   probes: int = spectra.DEFAULT_PROBES, steps: int = spectra.DEFAULT_STEPS,
                                   seed: int = 0, backend: str = "auto") -> Estimate:
    """DSMI between samples ``x`` [N, d] and discrete ``labels`` [N] (see module docstring)."""
    t = _check_t(t)
    if isinstance(repetitions, bool) or not isinstance(repetitions, numbers.Integral) or repetitions < 1:
        raise ValueError(f"repetitions must be a positive integer, got {repetitions!r}")
    X, s = _prepare(x, sigma, seed, backend)
    codes, values, counts = as_labels(labels, "labels")
    if codes.shape[0] != X.shape[0]:
        raise ValueError(f"x and labels must have the same number of samples, got {X.shape[0]} and {codes.shape[0]}")
    if int(counts.min()) < 2:
        lone = values[counts < 2][0].item()
        raise ValueError(f"labels: class {lone!r} has a single sample; DSE needs at least 2 per class")
    solver = solver_options(method, rank, probes, steps)
    gen = torch.Generator().manual_seed(int(seed))
    codes = codes.to(X.device)
    n = X.shape[0]
    total, variance = 0.0, 0.0
    for label in range(values.shape[0]):
        members = (codes == label).nonzero()[:, 0]
        size = members.shape[0]
        conditional, se_c, details = _dse(X[members], s, t, solver, seed, backend)
        random = []
        for _ in range(repetitions):
            pick = torch.randperm(n, generator=gen)[:size].to(X.device)
            random.append(_dse(X[pick], s, t, solver, seed, backend)[0])
        weight = size / n
        total += weight * (sum(random) / repetitions - conditional)
        spread = torch.tensor(random).std().item() if repetitions > 1 else 0.0
        variance += weight ** 2 * (spread ** 2 / repetitions + se_c ** 2)
    scale, units = units_of(base)
    return Estimate(total / scale, stderr=math.sqrt(variance) / scale, n=n,
                    method=f"diffusion spectral mutual information t={t:g}", units=units,
                    backend=details["backend"], details={"sigma": s, "t": t, "classes": int(values.shape[0]),
                                                         "repetitions": repetitions})

"""Spectral quantities of a curvature operator, from one block SLQ run.

``curvature_spectrum(op, probes, steps)`` runs stochastic Lanczos quadrature with all probes in
lockstep: ``steps`` data passes in all (PyHessian-style code makes probes x steps), tridiagonals
in float64. The nodes and weights it keeps give, with no further pass:

* ``trace()``                       tr H
* ``density(grid, width)``          the spectral density, Gaussian-broadened nodes (Papyan 2020)
* ``log_det(tau)``                  log det(I + H / tau)            = sum log(1 + lambda / tau)
* ``effective_dimension(z)``        N_eff(z) = sum lambda / (lambda + z)  (Maddox, Benton & Wilson)
* ``complexity(eps2, radius)``      Comp(eps^2) = 1/2 sum log(1 + lambda R^2 / (2 eps^2)): minus the
                                    log prior mass of the models within KL distance eps^2 of the
                                    fit, under a uniform prior of width R per direction (second
                                    order; ESTIMATORS.md)

each for a scalar or a whole grid of its parameter, each with a standard error over the probes.
The last three need a positive semi-definite operator: use kind="ggn" or "fisher"; for the
Hessian, negative eigenvalues (nodes) are clamped to 0, and ``negative_mass`` says how much
spectral mass that dropped.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import linalg


def _grid(values, name: str) -> tuple[np.ndarray, bool]:
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be a positive number or a 1-D array of positive numbers, got {values!r}")
    return arr, np.ndim(values) == 0


class CurvatureSpectrum:
    """Nodes and weights of a block SLQ run over a curvature operator (see module docstring)."""

    def __init__(self, quadrature: linalg.Quadrature, calls: int):
        self.quadrature = quadrature
        self.n = quadrature.n
        self.calls = calls

    def _sum(self, f, values, name):
        grid, scalar = _grid(values, name)
        out = [self.quadrature.trace(lambda lam, g=g: f(lam.clamp(min=0), g)) for g in grid]
        value, se = np.array([v for v, _ in out]), np.array([s for _, s in out])
        return (float(value[0]), float(se[0])) if scalar else (value, se)

    def trace(self) -> tuple[float, float]:
        return self.quadrature.trace(lambda lam: lam)

    @property
    def negative_mass(self) -> float:
        """-tr of the negative part (0 for a PSD operator): what the clamped quantities ignore."""
        return -self.quadrature.trace(lambda lam: lam.clamp(max=0))[0]

    def log_det(self, tau):
        return self._sum(lambda lam, t: torch.log1p(lam / t), tau, "tau")

    def effective_dimension(self, z):
        return self._sum(lambda lam, s: lam / (lam + s), z, "z")

    def complexity(self, eps2, radius: float = 1.0):
        if not (radius > 0 and math.isfinite(radius)):
            raise ValueError(f"radius must be a positive finite number, got {radius!r}")
        return self._sum(lambda lam, e: 0.5 * torch.log1p(lam * radius ** 2 / (2 * e)), eps2, "eps2")

    def density(self, grid=None, width: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(grid, density): the probes' quadrature measures averaged and broadened by Gaussians
        of standard deviation ``width`` (default 1% of the spectral range); integrates to n."""
        q = self.quadrature
        nodes = torch.cat([q.top, q.nodes[q.weights > 0]]).numpy()
        weights = torch.cat([torch.ones_like(q.top), (q.weights / q.nodes.shape[0])[q.weights > 0]]).numpy()
        lo, hi = float(nodes.min()), float(nodes.max())
        span = max(hi - lo, abs(hi), 1e-30)
        width = 0.01 * span if width is None else float(width)
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        grid = np.linspace(lo - 3 * width, hi + 3 * width, 512) if grid is None else np.asarray(grid, dtype=float)
        kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / width) ** 2) / (width * math.sqrt(2 * math.pi))
        return grid, kernel @ weights


def curvature_spectrum(op, *, probes: int = 8, steps: int = 64, deflate: int | None = None,
                       seed: int = 0) -> CurvatureSpectrum:
    """Block SLQ over ``op`` (a ``CurvatureOperator`` or any ``linalg.Operator``): ``steps``
    operator calls, plus those of ``deflate`` top eigenpairs when asked."""
    op = linalg.as_operator(op)
    before = op.calls
    eig = linalg.top_eigenpairs(op, deflate, seed=seed) if deflate else None
    quad = linalg.spectral_quadrature(op, probes=probes, steps=steps, deflate=eig, seed=seed + 1)
    return CurvatureSpectrum(quad, op.calls - before)

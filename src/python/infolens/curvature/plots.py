"""Figures of a curvature spectrum (matplotlib, an optional dependency: ``pip install infolens[plots]``).

``plot_density`` draws the Gaussian-broadened spectral density on a log scale (its mass spans
many decades: a bulk near 0 and a few outliers), ``plot_complexity`` the complexity curve
Comp(eps^2) with its standard-error band over a logarithmic grid of eps^2. Both return the Axes.
"""

from __future__ import annotations

import numpy as np


def _axes(ax):
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'infolens[plots]'") from None
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def plot_density(spectrum, ax=None, width: float | None = None):
    """The spectral density of ``spectrum`` (a CurvatureSpectrum)."""
    ax = _axes(ax)
    grid, density = spectrum.density(width=width)
    ax.semilogy(grid, np.maximum(density, 1e-12 * density.max()))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (eigenvalues per unit)")
    ax.set_title(f"spectral density ({spectrum.n} parameters)")
    return ax


def plot_complexity(spectrum, eps2=None, radius: float = 1.0, ax=None):
    """Comp(eps^2) = 1/2 log det(I + R^2 F / (2 eps^2)) over ``eps2`` (default 1e-6..1e2)."""
    ax = _axes(ax)
    eps2 = np.logspace(-6, 2, 49) if eps2 is None else np.asarray(eps2, dtype=float)
    value, se = spectrum.complexity(eps2, radius=radius)
    ax.semilogx(eps2, value)
    ax.fill_between(eps2, value - 2 * se, value + 2 * se, alpha=0.3, linewidth=0)
    ax.set_xlabel("KL radius eps^2")
    ax.set_ylabel("complexity (nats)")
    ax.set_title("complexity curve Comp(eps^2)")
    return ax

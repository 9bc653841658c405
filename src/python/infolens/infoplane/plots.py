"""Figures of a tracked run (matplotlib, an optional dependency: ``pip install 'infolens[plots]'``).

``plot_plane``: I(X;T) against I(T;Y), one marker per layer and checkpoint, coloured by epoch,
each layer's path joined by a thin line (Shwartz-Ziv & Tishby's figure). ``plot_curves``: a
metric of every layer over epochs. Both take a ``MetricStore`` and return the Axes.
"""

from __future__ import annotations

import numpy as np

from ..curvature.plots import _axes


def layers_of(store, metric: str) -> list[str]:
    seen = []
    for row in store.rows():
        if row["metric"] == metric and row["layer"] not in seen:
            seen.append(row["layer"])
    return seen


def plot_plane(store, estimator: str = "fixed", ax=None, title: str | None = None):
    """The information plane of ``estimator`` ("fixed", "adaptive", "knn", "renyi")."""
    import matplotlib.pyplot as plt
    ax = _axes(ax)
    markers = "osD^v<>ph*"
    scatter = None
    epochs_all = [c["epoch"] for c in store.checkpoints]
    lo, hi = (min(epochs_all), max(epochs_all)) if epochs_all else (0, 1)
    for i, layer in enumerate(layers_of(store, f"I(X;T) {estimator}")):
        ex, ixt = store.series(f"I(X;T) {estimator}", layer)
        ey, ity = store.series(f"I(T;Y) {estimator}", layer)
        if ex != ey:
            raise ValueError(f"layer {layer!r}: I(X;T) and I(T;Y) were recorded at different epochs")
        ax.plot(ixt, ity, color="0.7", linewidth=0.6, zorder=1)
        scatter = ax.scatter(ixt, ity, c=ex, cmap="viridis", vmin=lo, vmax=max(hi, lo + 1), s=22,
                             marker=markers[i % len(markers)], label=layer, zorder=2, edgecolors="none")
    if scatter is not None:
        plt.colorbar(scatter, ax=ax, label="epoch")
        ax.legend(title="layer", fontsize=7, title_fontsize=8, loc="lower right")
    ax.set_xlabel("I(X;T) (nats)")
    ax.set_ylabel("I(T;Y) (nats)")
    ax.set_title(title or f"information plane ({estimator})")
    return ax


def plot_curves(store, metric: str, ax=None, layers=None):
    """``metric`` over epochs, one line per layer (with +-2 standard errors where known)."""
    ax = _axes(ax)
    for layer in layers or layers_of(store, metric):
        rows = [r for r in store.rows() if r["metric"] == metric and r["layer"] == layer]
        epochs = np.array([r["epoch"] for r in rows], dtype=float)
        values = np.array([r["value"] for r in rows], dtype=float)
        ax.plot(epochs, values, marker=".", label=layer)
        se = np.array([np.nan if r["stderr"] is None else r["stderr"] for r in rows], dtype=float)
        if np.isfinite(se).any():
            ax.fill_between(epochs, values - 2 * se, values + 2 * se, alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.legend(fontsize=7)
    return ax

"""Lossy compression of a representation before its information is estimated.

Wide layers (hundreds of units) put kNN estimators far outside the dimension where they are
accurate; the information-bottleneck literature estimates MI between compressed representations
instead. ``compress=`` takes:

* an integer r: PCA to r components;
* a float in (0, 1): PCA to the fewest components that explain that share of the variance;
* ("pca", r or share): the same, spelled out;
* ("random", r): a seeded Gaussian random projection to r dimensions, scaled by 1/sqrt(r) so
  distances are kept on average (Johnson-Lindenstrauss).

Each variable is compressed on its own (two samples of one distribution, as in a divergence, share
one map fitted to both). The map is fitted once on all samples, and the subsamples and
permutations of ``ci=`` and ``n_permutations=`` reuse it: PCA of one variable does not depend on
how its rows pair with another's, so permutation tests stay exact. Class labels, and variables
already at or below the target width, are left as they are.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from .._arrays import as_samples, is_discrete


@dataclass(frozen=True)
class Compression:
    method: str           # "pca" or "random"
    dims: int | None      # target width, or None with a variance share
    variance: float | None
    seed: int = 0


@dataclass(frozen=True)
class Compressed:
    """What one variable went through (as recorded in ``Estimate.compression``)."""

    method: str
    dims_in: int
    dims_out: int
    explained_variance: float | None = None

    def __str__(self) -> str:
        share = "" if self.explained_variance is None else f", {100 * self.explained_variance:.3g}% of the variance"
        return f"{self.method} {self.dims_in} -> {self.dims_out} dims{share}"


def parse(spec, seed: int) -> Compression | None:
    if spec is None:
        return None
    method = "pca"
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        method, spec = spec[0].lower(), spec[1]
        if method not in ("pca", "random"):
            raise ValueError(f"compress: method must be 'pca' or 'random', got {method!r}")
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool) and spec >= 1:
        return Compression(method, int(spec), None, seed)
    if (method == "pca" and isinstance(spec, numbers.Real) and not isinstance(spec, (bool, numbers.Integral))
            and 0 < spec < 1):
        return Compression(method, None, float(spec), seed)
    raise ValueError("compress must be a number of dimensions >= 1, a share of variance in (0, 1), "
                     f"('pca', dims or share) or ('random', dims), got {spec!r}")


def _pca(t: torch.Tensor, c: Compression) -> tuple[torch.Tensor, Compressed]:
    t64 = t.to(torch.float64)
    mean = t64.mean(0)
    centred = t64 - mean
    # The d x d covariance: O(N d^2) and d x d memory, whatever N is.
    evals, evecs = torch.linalg.eigh(centred.T @ centred)
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    share = torch.cumsum(evals, 0) / evals.sum().clamp_min(torch.finfo(torch.float64).tiny)
    r = c.dims if c.dims is not None else int((share < c.variance - 1e-12).sum()) + 1
    r = min(r, t.shape[1])
    out = (centred @ evecs[:, :r]).to(t.dtype).contiguous()
    return out, Compressed("pca", t.shape[1], r, float(share[r - 1]))


def _random(t: torch.Tensor, c: Compression, salt: int) -> tuple[torch.Tensor, Compressed]:
    gen = torch.Generator().manual_seed(int(c.seed) * 1_000_003 + salt)
    proj = torch.randn(t.shape[1], c.dims, generator=gen, dtype=torch.float64) / c.dims ** 0.5
    out = (t.to(torch.float64) @ proj.to(t.device)).to(t.dtype).contiguous()
    return out, Compressed("random projection", t.shape[1], c.dims)


def compress(arrays: list, name: str, c: Compression, salt: int = 0):
    """Compress samples that share one map (one variable, or two samples of one distribution).

    Returns (compressed arrays, a ``Compressed`` record), or the inputs and None where nothing is
    to be done (labels, or a variable already at or below the target width).
    """
    if any(is_discrete(a) and a.ndim == 1 for a in arrays):
        return arrays, None
    ts = [as_samples(a, name) for a in arrays]
    width = ts[0].shape[1]
    if c.dims is not None and width <= c.dims:
        return arrays, None
    joint = torch.cat(ts, 0) if len(ts) > 1 else ts[0]
    out, record = _pca(joint, c) if c.method == "pca" else _random(joint, c, salt)
    sizes = [t.shape[0] for t in ts]
    return list(torch.split(out, sizes, 0)), record

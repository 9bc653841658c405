"""Information-plane coordinates of one layer by binning: I(X;T) and I(T;Y).

The activations T [N, units] of N distinct inputs are discretised unit by unit into bins, and the
tuple of a row's bin indices is ONE discrete symbol. Entropies are plug-in (maximum-likelihood)
entropies of those symbols' empirical frequencies, in nats unless ``base`` says otherwise.

* I(X;T) = H(T): T is a deterministic function of X, and X is uniform over the N samples (each
  sample is its own input), so H(T|X) = 0. It is at most log N.
* I(T;Y) = H(T) - H(T|Y) = H(T) - sum_y p(y) H(T | Y=y), computed cell by cell as
  sum_{t,y} p(t,y) log(p(t,y) / (p(t) p(y))) with the ratio formed from integer counts,
  c(t,y) N / (c(t) c(y)), so a table whose counts factorise gives exactly 0.

Binning (one rule for both methods: bin j is the half-open interval [e_j, e_{j+1}), the last bin
also holds its top edge; in code, ``torch.searchsorted(interior_edges, x, right=True)``):

* ``method="fixed"`` (Shwartz-Ziv & Tishby 2017): ``bins`` equal-width bins on ``value_range``
  (low, high) if given (e.g. (-1, 1) for tanh), else on the layer's own [min, max] over all units
  and samples. A value outside a given ``value_range`` is an error: nothing is clipped. A
  constant layer without ``value_range`` falls into one bin.
* ``method="adaptive"`` (Chelombiev, Houghton & O'Donnell 2019, entropy-based adaptive binning):
  all the layer's values are pooled over units and sorted, v_(0) <= ... <= v_(M-1); interior edge
  i is the order statistic v_(floor(i M / bins)), i = 1..bins-1, so with distinct values bin j
  holds exactly floor((j+1) M / bins) - floor(j M / bins) values. Ties make edges coincide (ReLU
  zeros): duplicate edges are merged and an edge equal to the minimum is dropped (it would leave
  the first bin empty), so fewer bins may result; every remaining bin holds at least one value,
  and ``details["bins"]`` is the number actually used (``details["bins_requested"]`` the ask).
  Edges depend on the values' order only, so the result is invariant under any strictly
  increasing map of the activations (up to ties created by rounding); fixed bins are not.

Symbols are found without a Python loop over rows: each row's bin indices are hashed (seeded
random integer weights, integer-exact float64 products per column block, folded into an int64
key modulo 2**64), the keys are made unique, and every row is then compared with the first row of
its key, so a hash collision can never merge distinct symbols (were one found,
``torch.unique(index_matrix, dim=0)`` decides instead). Work is done column block by column block
on the activations' device (CPU or CUDA), comparing each value with the edges exactly (in the
data's dtype where the edges are representable in it, else in float64); results are floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._arrays import as_labels, as_samples
from ..result import Estimate, units_of

METHODS = ("fixed", "adaptive")
_BLOCK = 1 << 22  # values per column block


def binned_information(activations, labels, *, method="fixed", bins=30, value_range=None,
                       base=None) -> tuple[Estimate, Estimate]:
    """(I(X;T), I(T;Y)) of one layer's binned activations, plug-in, in nats unless ``base``.

    ``activations``: [N, units] (1-D is one unit), one row per distinct input. ``labels``: [N]
    class labels. ``method``: "fixed" or "adaptive"; ``bins``: integer >= 2; ``value_range``:
    (low, high) for fixed bins (None: the layer's own min and max). See the module docstring.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    bins = int(bins)
    scale, units = units_of(base)
    t = as_samples(activations, "activations")
    n = t.shape[0]
    ycodes, _, ycounts = as_labels(labels, "labels")
    if ycodes.shape[0] != n:
        raise ValueError(f"labels must hold one label per row of activations: got {ycodes.shape[0]} "
                         f"labels for {n} rows")
    ycodes, ycounts = ycodes.to(t.device), ycounts.to(t.device)

    if method == "fixed":
        low, high = _fixed_range(t, value_range)
        edges = torch.linspace(low, high, bins + 1, dtype=torch.float64, device=t.device)
        used = bins
        details = {"bins": bins, "range": (low, high),
                   "range_from": "data" if value_range is None else "value_range"}
        label = f"fixed, {bins} bins"
    else:
        if value_range is not None:
            raise ValueError("value_range applies only to method='fixed'; adaptive bins take their "
                             "edges from the data")
        edges = _adaptive_edges(t, bins)
        used = edges.numel() - 1
        details = {"bins": used, "bins_requested": bins, "edges": edges.tolist()}
        label = f"adaptive, {used} bins" if used == bins else f"adaptive, {used} of {bins} bins"

    symbols = _symbols(t, edges[1:-1].contiguous())
    n_symbols = int(symbols.max()) + 1
    details["symbols"] = n_symbols
    h_t, i_ty = _plugin(symbols, n_symbols, ycodes, ycounts, n)
    common = dict(stderr=math.nan, n=n, units=units, backend="torch")
    return (Estimate(h_t / scale, method=f"binned I(X;T) ({label})", details=details, **common),
            Estimate(i_ty / scale, method=f"binned I(T;Y) ({label})",
                     details={**details, "classes": int(ycounts.numel())}, **common))


def _fixed_range(t: torch.Tensor, value_range) -> tuple[float, float]:
    lo, hi = float(t.min()), float(t.max())  # exact: float32/float64 -> Python float
    if value_range is None:
        return lo, hi
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (low, high) of numbers, got {value_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"value_range must be finite with low < high, got {value_range!r}")
    if lo < low or hi > high:
        t64 = t.to(torch.float64)
        outside = int(((t64 < low) | (t64 > high)).sum())
        raise ValueError(f"activations has {outside} value(s) outside value_range=({low:g}, {high:g}) "
                         f"(min {lo:g}, max {hi:g}); values are never clipped: widen value_range or "
                         f"pass value_range=None to bin on the data's own range")
    return low, high


def _adaptive_edges(t: torch.Tensor, bins: int) -> torch.Tensor:
    """[min, merged equal-count quantile edges..., max] as float64, on t's device."""
    values = t.reshape(-1)
    m = values.numel()
    ks = [(i * m) // bins for i in range(1, bins)]
    if values.is_cuda:
        picked = torch.sort(values).values[torch.tensor(ks, device=values.device)]
    else:  # selection, not a full sort: O(M log bins)
        arr = values.numpy()
        picked = torch.from_numpy(np.partition(arr, ks)[ks].copy())
    lo, hi = values.min().to(torch.float64), values.max().to(torch.float64)
    interior = torch.unique(picked.to(device=t.device, dtype=torch.float64))  # sorted, merged
    interior = interior[interior > lo]
    return torch.cat([lo[None], interior, hi[None]])


def _symbols(t: torch.Tensor, interior: torch.Tensor) -> torch.Tensor:
    """Symbol codes 0..S-1 [N] of the rows' bin-index tuples."""
    n, d = t.shape
    nb = interior.numel() + 1
    small = (torch.uint8 if nb <= 256 else torch.int16 if nb <= 1 << 15 else
             torch.int32 if nb <= 1 << 31 else torch.int64)
    step = max(1, min(1024, _BLOCK // n))
    # Each block's two hashes are integer-valued float64 dot products whose every partial sum is
    # below 2**53, hence exact in any summation order (identical rows always hash alike); the
    # blocks are then folded into one int64 key with odd multipliers, wrapping modulo 2**64.
    bits = 53 - math.ceil(math.log2(nb)) - math.ceil(math.log2(step + 1))
    gen = torch.Generator().manual_seed(0x1B1A5)
    if bits >= 16:
        weights = torch.randint(0, 1 << min(bits, 52), (d, 2), generator=gen, dtype=torch.int64)
        weights = weights.to(t.device, torch.float64)
    mults = torch.randint(-(1 << 62), 1 << 62, (d, 2), generator=gen, dtype=torch.int64)
    mults = (mults * 2 + 1).to(t.device)
    edges = interior.to(t.dtype) if t.dtype == torch.float64 or _exact_in(interior, t.dtype) else interior
    index = torch.empty((n, d), dtype=small, device=t.device)
    key = torch.zeros(n, dtype=torch.int64, device=t.device)
    for start in range(0, d, step):
        cols = slice(start, start + step)
        x = t[:, cols] if edges.dtype == t.dtype else t[:, cols].to(edges.dtype)
        block = torch.searchsorted(edges, x.contiguous(), right=True)
        index[:, cols] = block
        if bits >= 16:
            h = (index[:, cols].to(torch.float64) @ weights[cols]).to(torch.int64)  # [n, 2], exact
            key += h[:, 0] * mults[start, 0] + h[:, 1] * mults[start, 1]
        else:  # very many bins: wrapping int64 products, unit by unit
            key += (block.to(torch.int64) * mults[cols, 0]).sum(dim=1)
    return _codes(key, index)


def _codes(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Codes of the distinct rows of ``index`` given row hashes ``key``, verified exactly."""
    n = index.shape[0]
    _, codes = torch.unique(key, return_inverse=True)
    first = torch.full((int(codes.max()) + 1,), n, dtype=torch.int64, device=key.device)
    first.scatter_reduce_(0, codes, torch.arange(n, device=key.device), reduce="amin")
    if bool((index == index[first[codes]]).all()):
        return codes
    _, codes = torch.unique(index.to(torch.int64), dim=0, return_inverse=True)  # a hash collision
    return codes


def _exact_in(values: torch.Tensor, dtype: torch.dtype) -> bool:
    """True when every edge is representable in ``dtype`` (compare in the data's own dtype)."""
    return bool((values.to(dtype).to(values.dtype) == values).all())


def _plugin(codes: torch.Tensor, n_symbols: int, ycodes: torch.Tensor, ycounts: torch.Tensor,
            n: int) -> tuple[float, float]:
    """(H(T), I(T;Y)) in nats from symbol codes and label codes, plug-in, float64."""
    c_t = torch.bincount(codes, minlength=n_symbols).to(torch.float64)  # every symbol occurs
    h_t = float((c_t / n * torch.log(n / c_t)).sum())
    cells, c_ty = torch.unique(ycodes * n_symbols + codes, return_counts=True)
    y, sym = cells // n_symbols, cells % n_symbols
    c_ty = c_ty.to(torch.float64)
    ratio = (c_ty * n) / (c_t[sym] * ycounts[y].to(torch.float64))  # integers, exact below 2**53
    i_ty = float((c_ty / n * torch.log(ratio)).sum())
    return h_t, i_ty

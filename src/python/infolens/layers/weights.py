"""Singular-value spectra of a model's weight matrices.

Each layer's weight is read as a matrix W of shape [out, fan_in]:

* ``nn.Linear``: the weight itself, [out_features, in_features].
* ``nn.Conv1d/2d/3d``: [out_channels, in_channels * prod(kernel_size)], each row one filter
  flattened over its receptive field (channel-major, as ``weight.reshape(out, -1)`` orders it).
  This is the matrix that maps one receptive-field patch to one output pixel, the one the layer
  applies at every position (im2col). It is not the whole convolution operator on an image,
  whose spectrum also depends on the image size and padding (Sedghi et al. 2019).
* Grouped convolutions (``groups > 1``) are read as stored, [out, in/groups * prod(kernel)]: the
  groups' filters stacked as rows. The full layer matrix is block-diagonal, and its spectrum is
  the union of the groups' own spectra; for those, call ``spectrum_of`` on each group's rows
  ``weight[g * out/groups:(g + 1) * out/groups]``.

The bias is ignored: it shifts outputs but does not stretch, squeeze or rotate them.

Singular values come from ``torch.linalg.svdvals`` in float64. A singular value counts as zero
when it is at most ``s_max * max(out, fan_in) * eps``, with eps that of the weight's own dtype
(numpy's ``matrix_rank`` rule): a float32 weight is only known to float32 precision, so smaller
singular values are rounding noise. A matrix with fewer than min(out, fan_in) nonzero singular
values is rank deficient: its condition number is inf and its log-volume -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._arrays import _to_tensor
from ._select import WEIGHT_LAYERS, select_layers


@dataclass(frozen=True, eq=False)
class WeightSpectrum:
    """The spectrum of one weight matrix W [out, fan_in] and the summaries read off it.

    ``singular_values``: the min(out, fan_in) singular values, float64 numpy, descending
    (read-only). ``condition_number``: s_max / s_min (inf when rank deficient).
    ``log_volume``: sum_i log s_i, the log of the factor by which W scales the volume of a unit
    cube in its (min(out, fan_in)-dimensional) row space (-inf when rank deficient).
    ``effective_rank``: exp of the Shannon entropy of p_i = s_i / sum_j s_j (Roy & Vetterli
    2007), between 1 and min(out, fan_in). ``stable_rank``: ||W||_F^2 / s_max^2 = sum s_i^2 / s_max^2,
    a smooth lower bound on the rank. ``rank``: singular values above the tolerance (module
    docstring). ``shape``: (out, fan_in) of the matrix; ``weight_shape``: of the tensor read.
    A zero matrix has effective and stable rank 0.
    """

    singular_values: np.ndarray
    condition_number: float
    log_volume: float
    effective_rank: float
    stable_rank: float
    rank: int
    shape: tuple
    weight_shape: tuple

    def __repr__(self) -> str:
        return (f"WeightSpectrum(shape={self.shape}, rank={self.rank}, s_max={self.singular_values[0]:.4g}, "
                f"condition_number={self.condition_number:.4g}, log_volume={self.log_volume:.4g}, "
                f"effective_rank={self.effective_rank:.4g}, stable_rank={self.stable_rank:.4g})")


def spectrum_of(weight) -> WeightSpectrum:
    """The ``WeightSpectrum`` of one weight tensor, read as ``weight.reshape(weight.shape[0], -1)``.

    ``weight``: a tensor (or array) with at least 2 dimensions, dimension 0 the outputs, as
    ``nn.Linear`` and ``nn.Conv*d`` store theirs.
    """
    if isinstance(weight, torch.nn.parameter.UninitializedParameter):
        raise ValueError("weight is an uninitialised (lazy) parameter; run one forward pass first")
    w = _to_tensor(weight, "weight")
    if w.is_complex():
        raise TypeError(f"weight must hold real numbers, got dtype {w.dtype}")
    if w.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions [out, in, *kernel], got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"weight is empty (shape {tuple(w.shape)})")
    eps = torch.finfo(w.dtype).eps if w.dtype.is_floating_point else torch.finfo(torch.float64).eps
    matrix = w.reshape(w.shape[0], -1).to(torch.float64)
    bad = int((~torch.isfinite(matrix)).sum())
    if bad:
        raise ValueError(f"weight contains {bad} NaN or infinite value(s)")
    s = torch.linalg.svdvals(matrix).cpu().numpy()
    s.setflags(write=False)
    out, fan_in = matrix.shape
    s_max = float(s[0])
    rank = int((s > s_max * max(out, fan_in) * eps).sum()) if s_max > 0 else 0
    full = rank == s.size
    if s_max > 0:
        p = s[s > 0] / s.sum()
        effective_rank = math.exp(float(-(p * np.log(p)).sum()))
        stable_rank = float((s**2).sum() / s_max**2)
    else:
        effective_rank = stable_rank = 0.0
    return WeightSpectrum(
        singular_values=s,
        condition_number=s_max / float(s[-1]) if full else math.inf,
        log_volume=float(np.log(s).sum()) if full else -math.inf,
        effective_rank=effective_rank,
        stable_rank=stable_rank,
        rank=rank,
        shape=(out, fan_in),
        weight_shape=tuple(w.shape),
    )


def weight_spectra(model, layers=None) -> dict[str, WeightSpectrum]:
    """name -> ``WeightSpectrum`` for each nn.Linear / nn.Conv1d/2d/3d of ``model``.

    ``layers``: None (every such layer), or a name / module or a list of them; each must be an
    nn.Linear or nn.Conv1d/2d/3d of ``model``. Names are those of ``model.named_modules()``.
    """
    chosen = select_layers(model, layers, kinds=WEIGHT_LAYERS)
    return {name: spectrum_of(module.weight) for name, module in chosen.items()}

"""Turning user inputs into checked sample matrices.

Everything the estimators touch goes through here: numpy arrays, torch tensors (CPU or CUDA),
objects with ``__dlpack__`` or ``__array__``, and nested lists. Samples are rows; 1-D input is
one feature. Float32 stays float32 and float64 stays float64; integers and booleans become
float64 (exact for |v| < 2**53), float16/bfloat16 become float32. Anything else, and NaN or
infinity, is refused with an error that names the argument.
"""

from __future__ import annotations

import numpy as np
import torch


def _to_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        arr = x
    elif hasattr(x, "__dlpack__") and not hasattr(x, "__array__"):
        return torch.from_dlpack(x)
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be an array of numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got numpy dtype {arr.dtype}")
    return torch.from_numpy(arr if arr.flags.c_contiguous else arr.copy(order="C"))


def _float_dtype(t: torch.Tensor, name: str) -> torch.dtype:
    if t.dtype in (torch.float32, torch.float64):
        return t.dtype
    if t.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if t.dtype == torch.bool or not (t.dtype.is_floating_point or t.dtype.is_complex):
        return torch.float64
    raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")


def as_samples(x, name: str) -> torch.Tensor:
    """A contiguous [N, d] float32/float64 tensor of finite values, on the input's device."""
    t = _to_tensor(x, name)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"{name} must be 1-D (one feature) or 2-D [samples, features], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    t = t.to(_float_dtype(t, name)).contiguous()
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return t


def as_labels(y, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Discrete labels as (codes 0..L-1 [N], the distinct labels [L], their counts [L])."""
    t = _to_tensor(y, name)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if t.dtype.is_floating_point:
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or infinite labels")
    values, codes, counts = torch.unique(t, return_inverse=True, return_counts=True)
    return codes, values, counts


def is_discrete(y) -> bool:
    """Integer or boolean arrays are read as labels by ``method="auto"``."""
    dtype = y.dtype if isinstance(y, (np.ndarray, torch.Tensor)) else np.asarray(y).dtype
    if isinstance(dtype, torch.dtype):
        return dtype == torch.bool or not (dtype.is_floating_point or dtype.is_complex)
    return np.dtype(dtype).kind in "biu"


def same_samples(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same number of samples, got {a.shape[0]} and {b.shape[0]}")
    if a.device != b.device:
        raise ValueError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")


def common_dtype(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Promote to one dtype (float64 if any is), so joint spaces compare like with like."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return [t.to(dtype) for t in tensors]


def jittered(t: torch.Tensor, jitter: float, seed: int) -> torch.Tensor:
    """Seeded Gaussian noise scaled to each feature's spread, never below its float spacing.

    The scale is ``max(jitter * std_j, 4 * ulp(max_i |x_ij|))``: relative to the spread (not the
    magnitude, which gives spurious MI on offset features), and large enough to survive rounding.
    The noise is drawn on the CPU in float64, so the same seed gives the same data on any device.
    """
    if jitter < 0 or not np.isfinite(jitter):
        raise ValueError(f"jitter must be a finite number >= 0, got {jitter}")
    if jitter == 0:
        return t
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(t.shape, generator=gen, dtype=torch.float64)
    t64 = t.detach().to("cpu", torch.float64)
    spacing = torch.finfo(t.dtype).eps * t64.abs().amax(dim=0)
    scale = torch.maximum(jitter * t64.std(dim=0, correction=0), 4 * spacing)
    return (t64 + noise * scale).to(t.device, t.dtype).contiguous()

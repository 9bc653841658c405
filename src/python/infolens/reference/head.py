"""Reference curvature product of a softmax cross-entropy output layer, chunked over tokens in torch.

The same function as the native engines (src/cpp/curvature/softmax_ce_ggn.hpp): for head inputs
h [T, d], weights w [V, d], bias [V] (or None) and per-token loss weights [T], the logits are
z = h w^T + bias and p = softmax(z) per token. For b tangents dh [b, T, d], dw [b, V, d],
dbias [b, V] (None = zero) the logit tangent is dz_j = dh_j w^T + h dw_j^T + dbias_j and
u_j = token_weights * (p * dz_j - p (p . dz_j)), the logit Hessian of the weighted cross-entropy
applied to dz_j (labels do not enter). The outputs pull u_j back through the head:
out_dh_j = u_j w, out_dw_j = u_j^T h, out_dbias_j = sum_t u_j: together the head's block of the
generalised Gauss-Newton product J^T H J v (for this loss also the Fisher).

Logits and tangents are formed in the inputs' dtype, as the native engines form them; the
softmax, u and the output products are in float64, and the outputs are returned in the inputs'
dtype. Tokens go in chunks so that no more than about 16M (CPU) or 128M (CUDA) entries of the
[b, chunk, V] tangent exist at a time.
"""

from __future__ import annotations

import torch

_CHUNK_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 27}


def _vectors(h, w, bias, token_weights, dh, dw, dbias) -> int:
    """Checks the shapes and returns b."""
    if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[1]:
        raise ValueError(f"h [T, d] and w [V, d] must share d, got {tuple(h.shape)} and {tuple(w.shape)}")
    (T, d), V = h.shape, w.shape[0]
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"bias must have shape ({V},), got {tuple(bias.shape)}")
    if tuple(token_weights.shape) != (T,):
        raise ValueError(f"token_weights must have shape ({T},), got {tuple(token_weights.shape)}")
    given = [(name, x, rest) for name, x, rest in (("dh", dh, (T, d)), ("dw", dw, (V, d)), ("dbias", dbias, (V,)))
             if x is not None]
    if not given:
        raise ValueError("at least one of dh, dw, dbias must be given")
    b = given[0][1].shape[0]
    for name, x, rest in given:
        if tuple(x.shape) != (b, *rest):
            raise ValueError(f"{name} must have shape {(b, *rest)}, got {tuple(x.shape)}")
    return b


def softmax_ce_ggn(h, w, bias, token_weights, dh=None, dw=None, dbias=None):
    """(out_dh [b, T, d], out_dw [b, V, d], out_dbias [b, V]) in h's dtype; see the module docstring."""
    b = _vectors(h, w, bias, token_weights, dh, dw, dbias)
    (T, d), V = h.shape, w.shape[0]
    f64 = dict(dtype=torch.float64, device=h.device)
    out_dh = torch.empty(b, T, d, **f64)
    out_dw = torch.zeros(b, V, d, **f64)
    out_dbias = torch.zeros(b, V, **f64)
    w64 = w.to(torch.float64)
    step = max(1, _CHUNK_ELEMENTS.get(h.device.type, _CHUNK_ELEMENTS["cpu"]) // (b * V))
    for t0 in range(0, T, step):
        rows = slice(t0, min(T, t0 + step))
        hc = h[rows]
        z = hc @ w.T
        if bias is not None:
            z = z + bias
        p = torch.softmax(z.to(torch.float64), dim=-1)  # [Tc, V]
        dz = torch.zeros(b, hc.shape[0], V, dtype=h.dtype, device=h.device)
        if dh is not None:
            dz += dh[:, rows] @ w.T
        if dw is not None:
            dz += hc @ dw.transpose(1, 2)
        if dbias is not None:
            dz += dbias[:, None, :]
        dz = dz.to(torch.float64)
        s = (p * dz).sum(-1, keepdim=True)
        u = token_weights[rows].to(torch.float64)[:, None] * p * (dz - s)  # [b, Tc, V]
        out_dh[:, rows] = u @ w64
        out_dw += u.transpose(1, 2) @ hc.to(torch.float64)
        out_dbias += u.sum(1)
    return out_dh.to(h.dtype), out_dw.to(h.dtype), out_dbias.to(h.dtype)

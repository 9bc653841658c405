"""The layers' sweeps: what each layer type contributes to the four sweeps of ``sequential.py``.

Each layer object keeps what its forward computed and answers the three other sweeps. Tangents
are [B, b, ...]; ``v`` is the layer's dict of weight tangents {"weight": [b, *shape], ...} (only
the selected parameters), ``rh`` the tangent of its input (None: its input does not move).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------- elementwise layers
# (first derivative, second derivative) of h = s(z), from z and h

def _tanh(z, h):
    d1 = 1 - h * h
    return d1, -2 * h * d1


def _sigmoid(z, h):
    d1 = h * (1 - h)
    return d1, d1 * (1 - 2 * h)


def _relu(z, h):
    return (z > 0).to(z.dtype), None


def _gelu(z, h):
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * phi, phi * (2 - z * z)


def _silu(z, h):
    s = torch.sigmoid(z)
    d1 = s * (1 + z * (1 - s))
    return d1, s * (1 - s) * (2 + z * (1 - 2 * s))


def _leaky(slope):
    def derivatives(z, h):
        # built in z's dtype: a float32 constant 0.1 is off by 1e-9 in float64
        return (z > 0).to(z.dtype) * (1 - slope) + slope, None
    return derivatives


def elementwise(module):
    kind = type(module)
    if kind is nn.Tanh:
        return _tanh
    if kind is nn.Sigmoid:
        return _sigmoid
    if kind is nn.ReLU:
        return _relu
    if kind is nn.GELU and module.approximate == "none":
        return _gelu
    if kind is nn.SiLU:
        return _silu
    if kind is nn.LeakyReLU:
        return _leaky(module.negative_slope)
    return None


# --------------------------------------------------------------------------- the layers' sweeps
# Each layer object keeps what its forward computed and answers the three other sweeps. Tangents
# are [B, b, ...]; ``v`` is the layer's dict of weight tangents {"weight": [b, *shape], ...} (only
# the selected parameters), ``first`` marks a layer whose input is the data (R h_in = 0).

class Elementwise:
    reads_gradient = False
    absorbed = False  # a max-pool after it applies its slopes (see MaxPool.absorb)

    def __init__(self, derivatives):
        self.derivatives = derivatives

    def forward(self, module, h):
        z = h
        h = module(z.clone() if getattr(module, "inplace", False) else z)  # z is needed below
        self.d1, self.d2 = self.derivatives(z, h)
        return h

    def tangent(self, rh, v):
        if self.absorbed:
            return rh
        if self.d2 is None:  # piecewise linear: R z (self.rh) is not needed again, scale it in place
            return rh.mul_(self.d1.unsqueeze(1))
        return rh * self.d1.unsqueeze(1)

    def gradient(self, g):
        if self.d2 is not None:  # kept for every block of columns: [R J^T] g = s''(z) g R z
            self.d2g = (self.d2 * g).unsqueeze(1)
        return g * self.d1

    def backward(self, g, rg, v, second, need_input, acc):
        if self.absorbed:
            return rg
        # rg is this sweep's own temporary: scaled in place (the [B, b, ...] tangents of a
        # convolution's first layer are the largest tensors of the sweep)
        rgz = rg.mul_(self.d1.unsqueeze(1))
        if second and self.d2 is not None:
            rgz.addcmul_(self.rh, self.d2g)
        return rgz


class Reshape:
    """Flatten, Identity, Dropout (eval): the samples' shape changes, nothing else."""

    reads_gradient = False

    def forward(self, module, h):
        if getattr(module, "training", False) and type(module) is nn.Dropout:
            raise Unsupported("Dropout in training mode (random: not a curvature)")
        out = module(h)
        if out.shape[0] != h.shape[0]:
            raise Unsupported("a Flatten over the samples' axis")
        self.in_shape, self.out_shape = h.shape[1:], out.shape[1:]
        return out

    def tangent(self, rh, v):
        return rh.reshape(*rh.shape[:2], *self.out_shape)

    def gradient(self, g):
        return g.reshape(g.shape[0], *self.in_shape)

    def backward(self, g, rg, v, second, need_input, acc):
        return rg.reshape(*rg.shape[:2], *self.in_shape)


class Linear:
    reads_gradient = True  # backward's second-order terms read g at the output

    def forward(self, module, h):
        self.module, self.h = module, h
        return module(h)

    def tangent(self, rh, v):
        w, h = self.module.weight, self.h
        b, out = _columns(v, rh), w.shape[0]
        rz = None
        if rh is not None:  # W R h, all columns in one product over [B * b * ..., in]
            rz = (rh.reshape(-1, w.shape[1]) @ w.T).reshape(*rh.shape[:-1], out)
        if "weight" in v:   # V_j h for every column j: h @ [b * out, in]^T
            rz = _add_product(rz, h.reshape(-1, w.shape[1]), v["weight"].reshape(b * out, -1).T, h, b, out)
        if "bias" in v:
            bias = v["bias"].reshape(1, b, *([1] * (h.ndim - 2)), out)
            rz = bias.expand(h.shape[0], b, *h.shape[1:-1], out).clone() if rz is None else rz.add_(bias)
        return rz

    def backward(self, g, rg, v, second, need_input, acc):
        w, h = self.module.weight, self.h
        out, cin = w.shape
        b = rg.shape[1]
        rg_rows = _rows(rg)                            # [rows, b * out]
        if "weight" in v:
            # K^T R g: the sum over samples of R g_j h^T, all j as one [b * out, in] product,
            # accumulated in place (a fresh weight-sized result costs its page faults per batch)
            hw = acc["weight"]
            if hw.is_contiguous():
                hw.view(b * out, cin).addmm_(rg_rows.T, h.reshape(-1, cin))
            else:
                hw.add_((rg_rows.T @ h.reshape(-1, cin)).reshape(b, out, cin))
            if second and self.rh is not None:         # [R K^T] g = g (R h_j)^T
                extra = g.reshape(-1, out).T @ _rows(self.rh)
                hw.add_(extra.reshape(out, b, cin).transpose(0, 1))
        if "bias" in v:
            acc["bias"].add_(rg_rows.sum(dim=0).reshape(b, out))
        if not need_input:
            return None
        rg_in = (rg.reshape(-1, out) @ w).reshape(*rg.shape[:-1], cin)
        if second and "weight" in v:                   # [R J^T] g = V_j^T g for every column
            vt = v["weight"].transpose(0, 1).reshape(out, b * cin)
            rg_in = _add_product(rg_in, g.reshape(-1, out), vt, h, b, cin)
        return rg_in

    def gradient(self, g):
        return g @ self.module.weight


class Embedding:
    """Rows of a table picked by the input's indices: a first layer (indices have no tangent)."""

    reads_gradient = False

    @staticmethod
    def refusal(module):
        if module.padding_idx is not None or module.max_norm is not None or module.scale_grad_by_freq:
            # their gradients are not the derivative of the output (a row held fixed, a table
            # renormalised in place, rows rescaled by their counts)
            return "Embedding with padding_idx, max_norm or scale_grad_by_freq"
        return None

    def forward(self, module, h):
        _check(self.refusal(module))
        self.index = h
        return module(h)

    def tangent(self, rh, v):
        if "weight" not in v:
            return None
        w = v["weight"]  # [b, rows, d]: whole rows picked along the table's axis (6x faster than w[:, index])
        picked = torch.index_select(w, 1, self.index.reshape(-1))
        return picked.reshape(w.shape[0], *self.index.shape, w.shape[-1]).movedim(0, 1)  # [B, b, ..., d]

    def gradient(self, g):
        raise Unsupported("an Embedding reading a computed tensor")

    def backward(self, g, rg, v, second, need_input, acc):
        if "weight" in v:  # K^T R g: each row's R g added into its table row, every column at once
            # along the table's axis of the accumulator as it lies (3x faster than through a
            # transposed view, which index_add_ takes element by element)
            rows = rg.movedim(1, 0).reshape(rg.shape[1], -1, rg.shape[-1])
            acc["weight"].index_add_(1, self.index.reshape(-1), rows)
        return None


class Conv:
    """Convolutions, grouped or not. With G groups, output channel o reads the input channels of
    group o // (O / G) only. Stacking b columns' weights into one convolution keeps that only if
    the stacked channels are ordered group first, [G, b, O / G]: ``_grouped`` and ``_ungrouped``
    move the columns' axis in and out of that order (free views where G = 1)."""

    reads_gradient = True  # backward's second-order terms read g at the output

    @staticmethod
    def refusal(module):
        if module.padding_mode != "zeros":
            return "convolutions with non-zero padding modes"
        pads = module._reversed_padding_repeated_twice  # per axis (last first): before, after
        if any(pads[i] != pads[i + 1] for i in range(0, len(pads), 2)):
            return "convolutions padded unevenly (padding='same' with an even kernel)"
        return None

    def forward(self, module, h):
        _check(self.refusal(module))
        self.padding = tuple(module._reversed_padding_repeated_twice[::-2])
        self.module, self.h, self.groups = module, h, module.groups
        self.dims = h.ndim - 2
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        out = module(h)
        self.out_shape = out.shape[1:]
        return out

    def _apply(self, x, weight, bias=None):
        m = self.module
        return self.conv(x, weight, bias, m.stride, self.padding, m.dilation, self.groups)

    def _grouped(self, t, axis):
        """[..., b, C, ...] (b at ``axis``, C after it) -> [..., G * b * C / G, ...]."""
        g = self.groups
        t = t.reshape(*t.shape[:axis + 1], g, t.shape[axis + 1] // g, *t.shape[axis + 2:])
        t = t.movedim(axis, axis + 1)
        return t.reshape(*t.shape[:axis], -1, *t.shape[axis + 3:])

    def _ungrouped(self, t, axis, b):
        """The inverse of ``_grouped``: [..., G * b * C / G, ...] -> [..., b, C, ...]."""
        g = self.groups
        t = t.reshape(*t.shape[:axis], g, b, t.shape[axis] // (g * b), *t.shape[axis + 1:])
        t = t.movedim(axis + 1, axis)
        return t.reshape(*t.shape[:axis + 1], -1, *t.shape[axis + 3:])

    def tangent(self, rh, v):
        w = self.module.weight
        b, out = _columns(v, rh), w.shape[0]
        rz = None
        if rh is not None:  # W * R h over [B * b, C_in, ...]
            z = self._apply(rh.reshape(-1, *rh.shape[2:]), w)
            rz = z.reshape(rh.shape[0], b, *z.shape[1:])
        bias = self._grouped(v["bias"], 0) if "bias" in v else None
        if "weight" in v:   # V_j * h (+ the bias tangent) for every j: one convolution, b * C_out outputs
            z = self._apply(self.h, self._grouped(v["weight"], 0), bias)
            vh = self._ungrouped(z, 1, b)
            rz = vh if rz is None else rz.add_(vh)
        elif bias is not None:
            bias = v["bias"].reshape(1, b, out, *([1] * self.dims))
            rz = bias.expand(self.h.shape[0], b, *self.out_shape).clone() if rz is None else rz.add_(bias)
        return rz

    # torch.nn.grad's conv*_weight stands an expanded placeholder in for the weight it does not
    # read, which the backward then makes contiguous (a copy per call); an uninitialised one is
    # never touched. Its conv*_input does the same with a whole input, and a strided
    # convolution's backward copies even an uninitialised one: the transposed convolution is
    # the same product (bit for bit, on a CPU) without it, 1-3.6x faster on a ResNet's shapes.
    def _weight_grad(self, x, weight_shape, g, bias: bool = False):
        """The weight gradient of input x against g (and the bias gradient, or None)."""
        m = self.module
        _, weight, bias = torch.ops.aten.convolution_backward(
            g, x, x.new_empty(weight_shape), [weight_shape[0]] if bias else None, m.stride, self.padding,
            m.dilation, False, [0] * self.dims, self.groups, (False, True, bias))
        return weight, bias

    def _input_grad(self, shape, weight, g):
        m = self.module
        # the input's rows that the strides skip at the far end: the transpose must restore them
        extra = [size - ((out - 1) * stride - 2 * pad + dil * (k - 1) + 1) for size, out, stride, pad, dil, k
                 in zip(shape[2:], g.shape[2:], m.stride, self.padding, m.dilation, weight.shape[2:])]
        transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.dims - 1]
        return transpose(g, weight, None, m.stride, self.padding, extra, self.groups, m.dilation)

    def backward(self, g, rg, v, second, need_input, acc):
        w = self.module.weight
        h = self.h
        big, b, out, cin = h.shape[0], rg.shape[1], w.shape[0], h.shape[1]
        if "weight" in v:
            # K^T R g: the weight gradient of h against b * C_out output channels at once
            # (the bias's K^T R g, a sum of R g, comes with it)
            hw, hb = self._weight_grad(h, (b * out, *w.shape[1:]), self._grouped(rg, 1), bias="bias" in v)
            acc["weight"].add_(self._ungrouped(hw, 0, b))
            if hb is not None:
                acc["bias"].add_(self._ungrouped(hb, 0, b))
            if second and self.rh is not None:  # [R K^T] g: R h_j's channels against g
                extra, _ = self._weight_grad(self._grouped(self.rh, 1), (out, b * w.shape[1], *w.shape[2:]), g)
                acc["weight"].add_(extra.reshape(out, b, *w.shape[1:]).transpose(0, 1))
        elif "bias" in v:
            acc["bias"].add_(rg.sum(dim=(0, *range(3, rg.ndim))))
        if not need_input:
            return None
        rg_in = self._input_grad((big * b, *h.shape[1:]), w, rg.reshape(big * b, *rg.shape[2:]))
        rg_in = rg_in.reshape(big, b, *h.shape[1:])
        if second and "weight" in v:  # [R J^T] g = V_j^T * g, all j as b * C_in input channels
            vt = v["weight"].transpose(0, 1).reshape(out, b * w.shape[1], *w.shape[2:])
            extra = self._input_grad((big, b * cin, *h.shape[2:]), vt, g)
            rg_in = rg_in.add_(self._ungrouped(extra, 1, b))
        return rg_in

    def gradient(self, g):
        return self._input_grad(self.h.shape, self.module.weight, g)


class MaxPool:
    reads_gradient = False
    slopes = None  # [B, 1, C, *out]: the activation's slopes at the maxima, once absorbed

    @staticmethod
    def refusal(module):
        return "MaxPool with return_indices" if module.return_indices else None

    def forward(self, module, h):
        _check(self.refusal(module))
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[h.ndim - 2]
        src = h
        if h.ndim == 4 and h.device.type == "cpu":
            # the CPU's channels-last kernel is 2-4x faster, with the same maxima and indices
            src = h.contiguous(memory_format=torch.channels_last)
        out, index = pool(src, module.kernel_size, module.stride, module.padding, module.dilation,
                          ceil_mode=module.ceil_mode, return_indices=True)
        self.index = index.contiguous()
        self.in_shape = h.shape
        return out.contiguous()

    def _flat_index(self, b):
        idx = self.index.reshape(self.index.shape[0], 1, self.index.shape[1], -1)
        return idx.expand(-1, b, -1, -1)

    def absorb(self, act: Elementwise):
        """Take over the piecewise-linear activation just before (ReLU, LeakyReLU): selecting the
        maxima and scaling by its slopes commute, so both tangent sweeps scale at the pooled
        size, a quarter of the work for 2 x 2 windows, and the activation passes them on. Its
        slopes at full size were for the gradient sweep, which is done: they are not kept."""
        flat = act.d1.reshape(*act.d1.shape[:2], -1)
        self.slopes = flat.gather(2, self.index.flatten(2)).reshape(self.index.shape).unsqueeze(1)
        act.d1, act.absorbed = None, True

    def tangent(self, rh, v):
        if rh is None:
            return None
        b = rh.shape[1]
        flat = rh.reshape(*rh.shape[:3], -1)
        out = flat.gather(3, self._flat_index(b)).reshape(*rh.shape[:3], *self.index.shape[2:])
        return out if self.slopes is None else out.mul_(self.slopes)

    def _scatter(self, t):
        """[B, b, C, *out] -> [B, b, C, *in]: each window's value back at its maximum."""
        big, b, channels = t.shape[:3]
        full = t.new_zeros(big, b, channels, math.prod(self.in_shape[2:]))
        full.scatter_add_(3, self._flat_index(b), t.reshape(big, b, channels, -1))
        return full.reshape(big, b, *self.in_shape[1:])

    def gradient(self, g):
        return self._scatter(g.unsqueeze(1)).squeeze(1)

    def backward(self, g, rg, v, second, need_input, acc):
        return self._scatter(rg if self.slopes is None else rg.mul_(self.slopes))


class PerChannel(nn.Module):
    """GroupNorm's affine map per channel, z = gamma_c x + beta_c, after its standardisation
    (``Standardized``): the GroupNorm's own parameters (graph.py splits it in two)."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x):
        shape = (-1, *([1] * (x.ndim - 2)))
        z = x if self.weight is None else x * self.weight.reshape(shape)
        return z if self.bias is None else z + self.bias.reshape(shape)


class ChannelAffine:
    """An affine map per channel, z = gamma * xhat + beta with xhat = (h - mean) * s: BatchNorm in
    eval mode, on its running statistics (s = 1 / sqrt(var + eps)), and GroupNorm's affine map
    (``PerChannel``: mean 0, s 1)."""

    reads_gradient = True  # backward's second-order terms read g at the output

    @staticmethod
    def refusal(module):
        if not isinstance(module, PerChannel) and module.running_mean is None:
            return f"a {type(module).__name__} layer without running statistics"  # eval mode would use the batch's
        return None

    def forward(self, module, h):
        _check(self.refusal(module))
        shape = (-1, *([1] * (h.ndim - 2)))  # per channel, against [B, C, ...]
        if isinstance(module, PerChannel):
            self.s, self.xhat = h.new_ones(h.shape[1]).reshape(shape), h
        else:
            if module.training:  # (the operator runs the model in eval mode)
                raise Unsupported("BatchNorm in training mode (it couples the batch's samples)")
            self.s = (module.running_var + module.eps).rsqrt().to(h.dtype).reshape(shape)
            self.xhat = (h - module.running_mean.to(h.dtype).reshape(shape)) * self.s
        self.slope = self.s if module.weight is None else self.s * module.weight.reshape(shape)
        return module(h)

    def tangent(self, rh, v):
        b = _columns(v, rh)
        rz = None if rh is None else rh * self.slope
        if "weight" in v:   # xhat V_gamma for every column
            vh = self.xhat.unsqueeze(1) * v["weight"].reshape(1, b, *self.s.shape)
            rz = vh if rz is None else rz.add_(vh)
        if "bias" in v:
            bias = v["bias"].reshape(1, b, *self.s.shape)
            rz = bias.expand(self.xhat.shape[0], b, *self.xhat.shape[1:]).clone() if rz is None else rz.add_(bias)
        return rz

    def backward(self, g, rg, v, second, need_input, acc):
        axes = (0, *range(3, rg.ndim))  # the samples and the positions: per column and channel
        if "weight" in v:
            hw = (rg * self.xhat.unsqueeze(1)).sum(dim=axes)
            if second and self.rh is not None:  # [R K^T] g = g R xhat = g s R h
                hw.add_((self.rh * (g * self.s).unsqueeze(1)).sum(dim=axes))
            acc["weight"].add_(hw)
        if "bias" in v:
            acc["bias"].add_(rg.sum(dim=axes))
        if not need_input:
            return None
        rg_in = rg * self.slope
        if second and "weight" in v:  # [R J^T] g = V_gamma s g for every column
            rg_in.addcmul_((g * self.s).unsqueeze(1), v["weight"].reshape(1, rg.shape[1], *self.s.shape))
        return rg_in

    def gradient(self, g):
        return g * self.slope


class LayerNorm:
    """LayerNorm over the last k axes: z = gamma * xhat + beta, xhat = (h - mean) s with
    s = 1 / sqrt(var + eps) per sample (and position). Its Jacobian J = s (I - 11^T/n - xhat
    xhat^T/n) is symmetric, and its second derivative, the change of J^T a along a tangent u,
    is -s (m_u J^T a + m_a J u + xhat mean(a J u)) with m_u = mean(xhat u), m_a = mean(xhat a)
    (n: the normalised size; a = gamma g, the gradient reaching xhat)."""

    reads_gradient = True

    def forward(self, module, h):
        self.module = module
        self.axes = tuple(range(-len(module.normalized_shape), 0))
        mean = h.mean(self.axes, keepdim=True)
        self.s = (h.var(self.axes, unbiased=False, keepdim=True) + module.eps).rsqrt()
        self.xhat = (h - mean) * self.s
        return module(h)

    def _jacobian(self, u):
        """J u for tangents u [B, b, ...]."""
        xhat, s = self.xhat.unsqueeze(1), self.s.unsqueeze(1)
        return s * (u - u.mean(self.axes, keepdim=True) - xhat * (xhat * u).mean(self.axes, keepdim=True))

    def _scaled(self, t):
        return t if self.module.weight is None else t * self.module.weight

    def _per_column(self, t, b):
        """A parameter's tangent [b, *shape] against tangents [B, b, ..., *shape]."""
        return t.reshape(1, b, *([1] * (self.xhat.ndim - 1 - len(self.axes))), *t.shape[1:])

    def tangent(self, rh, v):
        b = _columns(v, rh)
        rz = None if rh is None else self._scaled(self._jacobian(rh))
        if "weight" in v:
            vh = self.xhat.unsqueeze(1) * self._per_column(v["weight"], b)
            rz = vh if rz is None else rz.add_(vh)
        if "bias" in v:
            bias = self._per_column(v["bias"], b)
            rz = bias.expand(self.xhat.shape[0], b, *self.xhat.shape[1:]).clone() if rz is None else rz.add_(bias)
        return rz

    def gradient(self, g):
        a = self._scaled(g)
        self.grad_in = self._jacobian(a.unsqueeze(1)).squeeze(1)  # kept: the second-order term reads it
        self.m_a = (self.xhat * a).mean(self.axes, keepdim=True)
        return self.grad_in

    def backward(self, g, rg, v, second, need_input, acc):
        b = rg.shape[1]
        sums = (0, *range(2, rg.ndim - len(self.axes)))  # all but the columns and the normalised axes
        moving = second and self.rh is not None
        rxhat = self._jacobian(self.rh) if moving else None
        if "weight" in v:
            hw = (rg * self.xhat.unsqueeze(1)).sum(sums)
            if moving:  # [R K^T] g = g R xhat
                hw.add_((rxhat * g.unsqueeze(1)).sum(sums))
            acc["weight"].add_(hw)
        if "bias" in v:
            acc["bias"].add_(rg.sum(sums))
        if not need_input:
            return None
        t = self._scaled(rg)
        if second and "weight" in v:  # R gamma = V_gamma: J^T (V_gamma g)
            t = t + g.unsqueeze(1) * self._per_column(v["weight"], b)
        rg_in = self._jacobian(t)
        if moving:
            xhat, s = self.xhat.unsqueeze(1), self.s.unsqueeze(1)
            a = self._scaled(g).unsqueeze(1)
            m_u = (xhat * self.rh).mean(self.axes, keepdim=True)
            second_order = (m_u * self.grad_in.unsqueeze(1) + self.m_a.unsqueeze(1) * rxhat
                            + xhat * (a * rxhat).mean(self.axes, keepdim=True))
            rg_in.sub_(s * second_order)
        return rg_in


class Standardized(nn.Module):
    """GroupNorm's standardisation without its affine map: each sample's groups of channels
    (with their positions) to mean 0 and variance 1."""

    def __init__(self, groups: int, eps: float):
        super().__init__()
        self.groups, self.eps = groups, eps

    def forward(self, x):
        return F.group_norm(x, self.groups, eps=self.eps)


class GroupStandardize(LayerNorm):
    """``Standardized``: LayerNorm without affine parameters over the last axis of the grouped
    view [B, G, C / G * positions] (a free view of [B, C, ...]); every sweep works in that view."""

    def forward(self, module, h):
        self.shape = h.shape[1:]
        grouped = h.reshape(h.shape[0], module.groups, -1)
        norm = nn.LayerNorm(grouped.shape[-1], eps=module.eps, elementwise_affine=False)
        return super().forward(norm, grouped).reshape(h.shape)

    def _grouped(self, t, lead):
        return None if t is None else t.reshape(*t.shape[:lead], self.xhat.shape[1], -1)

    def tangent(self, rh, v):
        self.rh = self._grouped(rh, 2)  # the driver's R h, read again by backward
        return super().tangent(self.rh, v).reshape(*rh.shape[:2], *self.shape)

    def gradient(self, g):
        return super().gradient(self._grouped(g, 1)).reshape(g.shape)

    def backward(self, g, rg, v, second, need_input, acc):
        back = super().backward(self._grouped(g, 1), self._grouped(rg, 2), v, second, need_input, acc)
        return None if back is None else back.reshape(rg.shape[:2] + self.shape)


class LinearMap:
    """A fixed linear map of each sample: average pooling (fixed or adaptive), upsampling,
    padding by zeros, reflection, replication or wrapping, pixel and channel shuffles. Its
    tangents are the map itself and its backward sweeps the map's adjoint (autograd's, at any
    point: it is the same)."""

    reads_gradient = False

    @staticmethod
    def refusal(module):
        if isinstance(module, nn.modules.padding._ConstantPadNd) and module.value != 0:
            return "ConstantPad with a value other than 0 (an affine map, not a linear one)"
        return None

    def forward(self, module, h):
        _check(self.refusal(module))
        self.module, self.in_shape = module, h.shape[1:]
        return module(h)

    def tangent(self, rh, v):
        if rh is None:
            return None
        z = self.module(rh.reshape(-1, *rh.shape[2:]))
        return z.reshape(*rh.shape[:2], *z.shape[1:])

    def _adjoint(self, t):
        """The adjoint of the pooling applied to t [rows, C, *out]."""
        with torch.enable_grad():
            point = t.new_zeros(t.shape[0], *self.in_shape, requires_grad=True)
            return torch.autograd.grad(self.module(point), point, t)[0]

    def gradient(self, g):
        return self._adjoint(g)

    def backward(self, g, rg, v, second, need_input, acc):
        return self._adjoint(rg.reshape(-1, *rg.shape[2:])).reshape(*rg.shape[:2], *self.in_shape)


class Unsupported(NotImplementedError):
    """A layer or loss met at run time that the sweeps do not cover (the operator falls back)."""


# --------------------------------------------------------------------------- joins and constants
# A join reads several tensors (``forward`` takes their values as a list); its sweeps take and
# give one tangent, gradient or R g per input. A tangent handed in is the join's own (see
# ``Plan._sweep``); what it hands back is each input's own.

class Add:
    """The sum of two tensors of one shape (a residual connection)."""

    reads_gradient = False
    rh = None

    def forward(self, hs):
        if hs[0].shape != hs[1].shape:
            raise Unsupported("a sum of tensors of different shapes (broadcasting)")
        return hs[0] + hs[1]

    def tangent(self, rhs):
        a, b = rhs
        return b if a is None else (a if b is None else a.add_(b))

    def gradient(self, g):
        return [g] * 2

    def backward(self, rg, need):
        """R g for each input that needs it: the first the join's own, copies for the rest (an
        input's backward may scale its R g in place)."""
        given, first = [], True
        for wanted in need:
            given.append(None if not wanted else rg if first else rg.clone())
            first = first and not wanted
        return given


class Cat:
    """Tensors joined along one axis of their samples (``dim`` as the caller gave it)."""

    reads_gradient = False
    rh = None

    def __init__(self, dim: int):
        self.dim = dim

    def forward(self, hs):
        out = torch.cat(hs, self.dim)
        self.axis = self.dim % out.ndim
        if self.axis == 0:
            raise Unsupported("a concatenation along the samples' axis")
        self.shapes = [h.shape[1:] for h in hs]
        self.sizes = [h.shape[self.axis] for h in hs]
        return out

    def tangent(self, rhs):
        some = next((t for t in rhs if t is not None), None)
        if some is None:
            return None
        # an input that no selected parameter moves has a zero tangent
        parts = [t if t is not None else some.new_zeros(*some.shape[:2], *shape) for t, shape in zip(rhs, self.shapes)]
        return torch.cat(parts, self.axis + 1)  # tangents [B, b, ...]: one axis further on

    def gradient(self, g):
        return list(torch.split(g, self.sizes, self.axis))

    def backward(self, rg, need):
        # views of disjoint parts: each input may scale its own in place
        return [part if wanted else None for part, wanted in zip(torch.split(rg, self.sizes, self.axis + 1), need)]


class Scaled(nn.Module):
    """A product with a constant (``x * 2``, ``x / 4``, ``-x`` in a traced forward)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class Scale:
    reads_gradient = False

    def forward(self, module, h):
        self.factor = module.factor
        return module(h)

    def tangent(self, rh, v):
        return rh.mul_(self.factor)  # rh is this layer's own

    def gradient(self, g):
        return g * self.factor

    def backward(self, g, rg, v, second, need_input, acc):
        return rg.mul_(self.factor)


class Rearranged(nn.Module):
    """The sample's axes in another order: ``x.permute(*dims)`` or ``x.transpose(a, b)``."""

    def __init__(self, dims=None, swap=None):
        super().__init__()
        self.dims, self.swap = dims, swap

    def order(self, ndim: int) -> list[int]:
        if self.dims is not None:
            return [d % ndim for d in self.dims]
        order = list(range(ndim))
        a, b = (d % ndim for d in self.swap)
        order[a], order[b] = order[b], order[a]
        return order

    def forward(self, x):
        return x.permute(self.order(x.ndim))


class Rearrange:
    reads_gradient = False

    def forward(self, module, h):
        order = module.order(h.ndim)
        if order[0] != 0:
            raise Unsupported("a permutation that moves the samples' axis")
        self.order, self.inverse = order, [order.index(d) for d in range(h.ndim)]
        return h.permute(order)

    @staticmethod
    def _columns(order):  # the tangents' [B, b, ...] order
        return [0, 1, *(d + 1 for d in order[1:])]

    def tangent(self, rh, v):
        return rh.permute(self._columns(self.order))

    def gradient(self, g):
        return g.permute(self.inverse)

    def backward(self, g, rg, v, second, need_input, acc):
        return rg.permute(self._columns(self.inverse))


class Reduced(nn.Module):
    """A mean or sum over axes of each sample (``x.mean((2, 3))``, ``x.sum(-1, keepdim=True)``)."""

    def __init__(self, dims, keepdim: bool, mean: bool):
        super().__init__()
        self.dims, self.keepdim, self.mean = tuple(dims), keepdim, mean

    def forward(self, x):
        return (x.mean if self.mean else x.sum)(self.dims, keepdim=self.keepdim)


class Reduce:
    reads_gradient = False

    def forward(self, module, h):
        self.dims = sorted({d % h.ndim for d in module.dims})
        if not self.dims or self.dims[0] == 0:
            raise Unsupported("a mean or sum over the samples' axis")
        self.keepdim, self.mean, self.in_shape = module.keepdim, module.mean, h.shape[1:]
        self.scale = 1 / math.prod(h.shape[d] for d in self.dims) if module.mean else 1
        return module(h)

    def _reduce(self, t, shift):
        dims = tuple(d + shift for d in self.dims)
        return (t.mean if self.mean else t.sum)(dims, keepdim=self.keepdim)

    def _spread(self, t, shift):
        """The adjoint: each reduced entry spread back over its axes (times 1 / count for a mean)."""
        if not self.keepdim:
            for d in self.dims:
                t = t.unsqueeze(d + shift)
        full = t.new_empty(*t.shape[:1 + shift], *self.in_shape)
        return full.copy_(t).mul_(self.scale) if self.mean else full.copy_(t)

    def tangent(self, rh, v):
        return self._reduce(rh, 1)

    def gradient(self, g):
        return self._spread(g, 0)

    def backward(self, g, rg, v, second, need_input, acc):
        return self._spread(rg, 1)


def _columns(v, rh) -> int:
    return rh.shape[1] if rh is not None else next(iter(v.values())).shape[0]


def _rows(t):
    """[B, b, ..., c] -> [B * ..., b * c]: a linear layer's rows (samples and any extra axes)
    against the columns' features; a free view when there are no extra axes."""
    if t.ndim > 3:
        t = t.movedim(1, -2)
    return t.reshape(-1, t.shape[-2] * t.shape[-1])


def _add_product(target, a, m, h, b, c):
    """target + _unrows(a @ m): accumulated in place by addmm where the layouts agree (no extra
    temporary: on a CPU, each fresh [B, b, c] block costs its page faults)."""
    if target is None:
        return _unrows(a @ m, h, b, c)
    if h.ndim == 2 and target.is_contiguous():
        target.view(h.shape[0], b * c).addmm_(a, m)
        return target
    return target.add_(_unrows(a @ m, h, b, c))


def _unrows(m, h, b, c):
    """The inverse of ``_rows`` for a product m [rows, b * c] over the rows of h [B, ..., in]."""
    z = m.reshape(*h.shape[:-1], b, c)
    return z if h.ndim == 2 else z.movedim(-2, 1)


LAYERS = {nn.Linear: Linear, nn.Embedding: Embedding, nn.Conv1d: Conv, nn.Conv2d: Conv, nn.Conv3d: Conv,
           nn.MaxPool1d: MaxPool, nn.MaxPool2d: MaxPool, nn.MaxPool3d: MaxPool,
           nn.BatchNorm1d: ChannelAffine, nn.BatchNorm2d: ChannelAffine, nn.BatchNorm3d: ChannelAffine,
           PerChannel: ChannelAffine, Standardized: GroupStandardize,
           nn.LayerNorm: LayerNorm, Scaled: Scale, Rearranged: Rearrange, Reduced: Reduce,
           nn.Flatten: Reshape, nn.Identity: Reshape, nn.Dropout: Reshape}
LAYERS.update(dict.fromkeys(
    (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
     nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle,
     nn.ChannelShuffle, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
     nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
     nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d), LinearMap))
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def refusal(module) -> str | None:
    """Why the sweeps do not cover a module of a covered type, as it is set up; or None."""
    check = getattr(LAYERS.get(type(module)), "refusal", None)
    return check(module) if check is not None else None


def _check(reason):
    if reason is not None:
        raise Unsupported(reason)


def layer_for(module):
    fn = elementwise(module)
    if fn is not None:
        return Elementwise(fn)
    return LAYERS.get(type(module), Reshape)()  # a traced view or reshape is a bare function

"""Hessian and Gauss-Newton products of an ``nn.Sequential`` model, layer by layer, for b columns.

For a chain of layers h_l = f_l(h_{l-1}; theta_l) under a loss L(h_last, y), Pearlmutter's R-op
writes the exact curvature product out as four sweeps (R{.} is the directional derivative along
the tangent v):

* forward:     h_l, and the layers' local derivatives;
* R-forward:   R h_l = J_l R h_{l-1} + K_l v_l            (J: by the input, K: by the weights);
* at the loss: g = dL/dh_last,  R g = H_L R h_last;
* backward:    g_{l-1} = J_l^T g_l,
               R g_{l-1} = J_l^T R g_l + [R J_l^T] g_l       (second derivatives of the layer),
               (H v)_l = K_l^T R g_l + [R K_l^T] g_l.

The Gauss-Newton product J^T H_L J is the same sweep without the bracketed terms. Written out,
each layer's work for all b columns is ONE large matrix product or convolution: the columns ride
along the samples' axis (tangents are [B, b, ...], sample-major, so that [B * b, ...] and
[B, b * C, ...] are free views), and the weight tangents of the b columns stack into one weight
of b times the outputs. On a CPU this ran an MLP's 8-column Hessian product 1.3-1.5x faster than
autograd's batched double backward, and a small CNN's (in blocks, see ``Plan.product``) 1.4x faster
than autograd's fastest, a loop over the columns.

Which models: exactly these module types in a (nested) ``nn.Sequential``: Linear, Conv1d/2d/3d
(zero padding, no groups), Flatten, MaxPool1d/2d/3d, AvgPool1d/2d/3d and AdaptiveAvgPool1d/2d/3d,
BatchNorm1d/2d/3d with running statistics and Dropout (the operator runs in eval mode, where
the one is an affine map per channel and the other the identity), LayerNorm, Identity, and the
elementwise Tanh, Sigmoid, ReLU, LeakyReLU, GELU (exact), SiLU; under ``nn.CrossEntropyLoss``
(class-index targets, class weights and ignore_index allowed, no label smoothing, mean or sum)
or ``nn.MSELoss`` (mean or sum). ``plan`` says why anything else is not covered, and the
operator then uses autograd. Subclasses are refused: their forward may differ.

Across passes: the forward and gradient sweeps of each batch are kept (up to ``KEEP_BYTES``) and
reused while the batch's data and the parameters are unchanged, see ``_Kept``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import grad as conv_grad


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


def _elementwise(module):
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

class _Elementwise:
    reads_gradient = False
    absorbed = False  # a max-pool after it applies its slopes (see _MaxPool.absorb)

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


class _Reshape:
    """Flatten, Identity, Dropout (eval): the samples' shape changes, nothing else."""

    reads_gradient = False

    def forward(self, module, h):
        if module.training and type(module) is nn.Dropout:
            raise _Unsupported("Dropout in training mode (random: not a curvature)")
        out = module(h)
        if out.shape[0] != h.shape[0]:
            raise _Unsupported("a Flatten over the samples' axis")
        self.in_shape, self.out_shape = h.shape[1:], out.shape[1:]
        return out

    def tangent(self, rh, v):
        return rh.reshape(*rh.shape[:2], *self.out_shape)

    def gradient(self, g):
        return g.reshape(g.shape[0], *self.in_shape)

    def backward(self, g, rg, v, second, need_input, acc):
        return rg.reshape(*rg.shape[:2], *self.in_shape)


class _Linear:
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


class _Conv:
    reads_gradient = True  # backward's second-order terms read g at the output

    def forward(self, module, h):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise _Unsupported("convolutions with groups, string padding or non-zero padding modes")
        self.module, self.h = module, h
        self.dims = h.ndim - 2
        self.conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        out = module(h)
        self.out_shape = out.shape[1:]
        return out

    def _apply(self, x, weight, bias=None):
        m = self.module
        return self.conv(x, weight, bias, m.stride, m.padding, m.dilation)

    def tangent(self, rh, v):
        w = self.module.weight
        b, out = _columns(v, rh), w.shape[0]
        rz = None
        if rh is not None:  # W * R h over [B * b, C_in, ...]
            z = self._apply(rh.reshape(-1, *rh.shape[2:]), w)
            rz = z.reshape(rh.shape[0], b, *z.shape[1:])
        bias = v["bias"].reshape(b * out) if "bias" in v else None
        if "weight" in v:   # V_j * h (+ the bias tangent) for every j: one convolution, b * C_out outputs
            z = self._apply(self.h, v["weight"].reshape(b * out, *w.shape[1:]), bias)
            vh = z.reshape(z.shape[0], b, out, *z.shape[2:])
            rz = vh if rz is None else rz.add_(vh)
        elif bias is not None:
            bias = bias.reshape(1, b, out, *([1] * self.dims))
            rz = bias.expand(self.h.shape[0], b, *self.out_shape).clone() if rz is None else rz.add_(bias)
        return rz

    def _weight_grad(self, x, weight_shape, g):
        m = self.module
        fn = (conv_grad.conv1d_weight, conv_grad.conv2d_weight, conv_grad.conv3d_weight)[self.dims - 1]
        return fn(x, weight_shape, g, m.stride, m.padding, m.dilation)

    def _input_grad(self, shape, weight, g):
        m = self.module
        fn = (conv_grad.conv1d_input, conv_grad.conv2d_input, conv_grad.conv3d_input)[self.dims - 1]
        return fn(shape, weight, g, m.stride, m.padding, m.dilation)

    def backward(self, g, rg, v, second, need_input, acc):
        w = self.module.weight
        h = self.h
        big, b, out, cin = h.shape[0], rg.shape[1], w.shape[0], w.shape[1]
        spatial = w.shape[2:]
        if "weight" in v:
            # K^T R g: the weight gradient of h against b * C_out output channels at once
            hw = self._weight_grad(h, (b * out, cin, *spatial), rg.reshape(big, b * out, *rg.shape[3:]))
            acc["weight"].add_(hw.reshape(b, *w.shape))
            if second and self.rh is not None:  # [R K^T] g: R h_j's channels against g
                rh = self.rh.reshape(big, b * cin, *self.rh.shape[3:])
                extra = self._weight_grad(rh, (out, b * cin, *spatial), g)
                acc["weight"].add_(extra.reshape(out, b, cin, *spatial).transpose(0, 1))
        if "bias" in v:
            acc["bias"].add_(rg.sum(dim=(0, *range(3, rg.ndim))))
        if not need_input:
            return None
        rg_in = self._input_grad((big * b, *h.shape[1:]), w, rg.reshape(big * b, *rg.shape[2:]))
        rg_in = rg_in.reshape(big, b, *h.shape[1:])
        if second and "weight" in v:  # [R J^T] g = V_j^T * g, all j as b * C_in input channels
            vt = v["weight"].transpose(0, 1).reshape(out, b * cin, *spatial)
            extra = self._input_grad((big, b * cin, *h.shape[2:]), vt, g)
            rg_in = rg_in.add_(extra.reshape(big, b, *h.shape[1:]))
        return rg_in

    def gradient(self, g):
        return self._input_grad(self.h.shape, self.module.weight, g)


class _MaxPool:
    reads_gradient = False
    slopes = None  # [B, 1, C, *out]: the activation's slopes at the maxima, once absorbed

    def forward(self, module, h):
        if module.return_indices:
            raise _Unsupported("MaxPool with return_indices")
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

    def absorb(self, act: _Elementwise):
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


class _BatchNorm:
    """BatchNorm in eval mode: on its running statistics an affine map per channel,
    z = gamma * xhat + beta with xhat = (h - mean) * s, s = 1 / sqrt(var + eps)."""

    reads_gradient = True  # backward's second-order terms read g at the output

    def forward(self, module, h):
        if module.training:
            raise _Unsupported("BatchNorm in training mode (it couples the batch's samples)")
        shape = (-1, *([1] * (h.ndim - 2)))  # per channel, against [B, C, ...]
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


class _LayerNorm:
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


class _AvgPool:
    """Average pooling, fixed or adaptive: linear, so its tangents are the pooling itself and
    its backward sweeps the pooling's adjoint (autograd's, at any point: it is the same)."""

    reads_gradient = False

    def forward(self, module, h):
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


class _Unsupported(NotImplementedError):
    """A layer or loss met at run time that the sweeps do not cover (the operator falls back)."""


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


_LAYERS = {nn.Linear: _Linear, nn.Conv1d: _Conv, nn.Conv2d: _Conv, nn.Conv3d: _Conv,
           nn.MaxPool1d: _MaxPool, nn.MaxPool2d: _MaxPool, nn.MaxPool3d: _MaxPool,
           nn.AvgPool1d: _AvgPool, nn.AvgPool2d: _AvgPool, nn.AvgPool3d: _AvgPool,
           nn.AdaptiveAvgPool1d: _AvgPool, nn.AdaptiveAvgPool2d: _AvgPool, nn.AdaptiveAvgPool3d: _AvgPool,
           nn.BatchNorm1d: _BatchNorm, nn.BatchNorm2d: _BatchNorm, nn.BatchNorm3d: _BatchNorm,
           nn.LayerNorm: _LayerNorm,
           nn.Flatten: _Reshape, nn.Identity: _Reshape, nn.Dropout: _Reshape}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# --------------------------------------------------------------------------- the losses

class _Loss:
    """The loss's gradient g and the product R g = H_L R z at the model's output z [B, ...]."""

    def __init__(self, kind: str, reduction: str, ignore_index: int = -100, classes=None):
        self.kind, self.reduction, self.ignore_index = kind, reduction, ignore_index
        self.classes = classes  # cross-entropy's class weights, or None

    def terms(self, y, outputs: int):
        """What the batch's mean divides by (1 for a sum): its targets not ignored, or for squared
        error its output elements (``outputs`` per sample). Taken over the whole batch, since
        the sweeps may run over blocks of its rows."""
        if self.reduction == "sum":
            return 1
        if self.kind == "mse":
            return y.shape[0] * outputs
        if y.is_floating_point():
            raise _Unsupported("CrossEntropyLoss other than [B, C] logits and class-index targets")
        keep = y != self.ignore_index
        if self.classes is not None:  # a weighted mean: over the kept targets' class weights
            return float(self.classes.to(y.device)[y[keep]].sum()) or 1.0
        return max(int(keep.sum()), 1)  # all ignored: PyTorch's mean is NaN

    def gradient(self, z, y, terms):
        """(g, state): the gradient at the outputs z, and what ``product`` needs of this block."""
        if self.kind == "mse":
            if y.shape != z.shape:
                raise _Unsupported("MSELoss with targets of another shape than the outputs (broadcasting)")
            scale = 2.0 / terms
            return scale * (z - y), scale
        if z.ndim != 2 or y.ndim != 1 or y.dtype not in (torch.int64, torch.int32):
            raise _Unsupported("CrossEntropyLoss other than [B, C] logits and class-index targets")
        p = torch.softmax(z, dim=1)
        keep = y != self.ignore_index
        share = keep.to(z.dtype)
        if self.classes is not None:
            share = share * self.classes.to(z.device, z.dtype)[torch.where(keep, y, 0)]
        weight = (share / terms)[:, None]
        onehot = F.one_hot(torch.where(keep, y, 0).long(), z.shape[1]).to(z.dtype)
        return weight * (p - onehot), (p, weight)

    def product(self, rz, state):
        """R g for the tangents rz [B, b, ...], with ``state`` from this block's ``gradient``."""
        if self.kind == "mse":
            return state * rz
        p, weight = state
        p = p.unsqueeze(1)                  # [B, 1, C] against rz [B, b, C]
        prz = p * rz
        return weight.unsqueeze(1) * (prz - p * prz.sum(dim=-1, keepdim=True))


def _loss_of(loss) -> _Loss | str:
    kind = type(loss)
    if kind is nn.CrossEntropyLoss:
        if loss.label_smoothing != 0:
            return "CrossEntropyLoss with label smoothing"
        if loss.reduction not in ("mean", "sum"):
            return f"CrossEntropyLoss with reduction={loss.reduction!r}"
        return _Loss("ce", loss.reduction, loss.ignore_index, loss.weight)
    if kind is nn.MSELoss:
        if loss.reduction not in ("mean", "sum"):
            return f"MSELoss with reduction={loss.reduction!r}"
        return _Loss("mse", loss.reduction)
    if loss is F.cross_entropy:
        return _Loss("ce", "mean")
    if loss is F.mse_loss:
        return _Loss("mse", "mean")
    return f"a loss other than nn.CrossEntropyLoss or nn.MSELoss ({kind.__name__})"


# --------------------------------------------------------------------------- the plan

def _flat(model):
    if type(model) is nn.Sequential:
        for child in model:
            yield from _flat(child)  # iterating, not children(): a layer used twice appears twice
    else:
        yield model


class Plan:
    """A model and loss the sweeps cover: the layers in order, with their parameters' names."""

    def __init__(self, modules, prefixes, loss: _Loss, names):
        self.modules, self.prefixes, self.loss = modules, prefixes, loss
        self.names = set(names)
        self._sized = None  # (input shape, dtype, device) -> every layer's output size, see _sizes
        # what the kept sweeps depend on besides the data: parameters and running statistics
        self.kept = _Kept([t for m in modules for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))])

    def product(self, theta, tangents, x, y, *, second: bool = True, chunk: int | None = None,
                scale: float = 1.0, into: dict | None = None, batch: int | None = None) -> dict:
        """{name: [b, *shape]}: the Hessian (``second``) or Gauss-Newton matrix of the batch's loss
        times the b columns of ``tangents``, at the module's current parameters ``theta`` (the
        operator passes them detached; they must be the module's own), times ``scale`` and
        added into ``into`` where given (a pass's running sum over its batches). ``batch``, the
        batch's place in its pass, lets the forward and gradient sweeps be kept for the next
        pass (see ``_Kept``).

        The sweeps run over blocks of columns (at most ``chunk``) and rows whose largest tangent
        stays near ``BLOCK_BYTES`` (at least ``MIN_ROWS`` rows): the products are sums over
        samples and separate over columns, so blocking changes nothing but memory and speed. The
        forward and gradient sweeps run once per block of rows, whatever the blocks of columns.
        On a CPU a small CNN's 8-column product ran 1.9x faster in blocks of 2 columns x 32 rows
        than whole (128 rows), where each [B, b, ...] tangent of its first layer was 64 MB (and
        1.15x faster than in blocks of 4 x 32): blocks that stay in cache win; an MLP's tangents
        are small and run whole."""
        b = next(iter(tangents.values())).shape[0]
        sizes = self._sizes(x)
        first = self._first_moving(tangents)
        # tangents exist from the first moving layer's output on (the input's R h is zero)
        cols, rows = _blocks(b, x.shape[0], max(sizes[first:]) * x.element_size())
        cols = cols if chunk is None else max(1, min(cols, int(chunk)))
        out = into if into is not None else {k: torch.zeros_like(t) for k, t in tangents.items()}
        with torch.no_grad():
            setting = (rows, first, scale)
            blocks = self.kept.find(batch, x, y, setting)
            if blocks is None:
                # the loss's divisor over the scale: every product is linear in the loss
                terms = self.loss.terms(y, sizes[-1]) / scale
                blocks = [self._forward(x[r:r + rows], y[r:r + rows], terms, first)
                          for r in range(0, x.shape[0], rows)]
                self.kept.keep(batch, x, y, setting, blocks)
            for block in blocks:  # the forward and gradient sweeps of a block of rows serve all its columns
                for c in range(0, b, cols):
                    part = {k: t[c:c + cols] for k, t in tangents.items()}
                    acc = {k: t[c:c + cols] for k, t in out.items()}
                    self._sweep(block, part, first, second, acc)
        return out

    def _sizes(self, x) -> list[int]:
        """Every layer's output, in elements per sample, from one sample's forward pass (kept
        per input shape)."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if self._sized is None or self._sized[0] != key:
            h, sizes = x[:1], []
            with torch.no_grad():
                for module in self.modules:
                    h = module(h)
                    sizes.append(h[0].numel())
            self._sized = (key, sizes)
        return self._sized[1]

    def _forward(self, x, y, terms, first) -> _Block:
        """The forward sweep and the loss's gradient, carried back to every layer's output from the
        last down to the first that moves."""
        layers = []
        h = x
        for module in self.modules:
            layer = _layer(module)
            h = layer.forward(module, h)
            layers.append(layer)
        grads = [None] * len(layers)
        grads[-1], state = self.loss.gradient(h, y, terms)
        for i in range(len(layers) - 1, first, -1):
            grads[i - 1] = layers[i].gradient(grads[i])
        # only what the backward sweeps read stays (the block may be kept across passes)
        grads = [g if layer.reads_gradient else None for g, layer in zip(grads, layers)]
        for act, pool in zip(layers, layers[1:]):
            if isinstance(act, _Elementwise) and act.d2 is None and isinstance(pool, _MaxPool):
                pool.absorb(act)
        return _Block(layers, grads, state)

    def _sweep(self, block: _Block, tangents, first, second, acc):
        """One block of columns' R-forward, loss and backward sweeps, its products added into ``acc``."""
        layers, grads = block.layers, block.grads
        rh = None
        for layer, module, prefix in zip(layers, self.modules, self.prefixes):
            v = self._tangents(module, prefix, tangents)
            layer.rh = rh
            rh = layer.tangent(rh, v) if (rh is not None or v) else None
        if rh is not None:  # else no selected parameter moves the output: the product is zero
            rg = self.loss.product(rh, block.state)
            for i in range(len(layers) - 1, first - 1, -1):
                module, prefix, layer = self.modules[i], self.prefixes[i], layers[i]
                v = self._tangents(module, prefix, tangents)
                rg = layer.backward(grads[i], rg, v, second, i > first, self._tangents(module, prefix, acc))
        for layer in layers:  # the block may be kept: not these columns' tangents with it
            layer.rh = None

    def _tangents(self, module, prefix, tangents) -> dict:
        return {key: tangents[prefix + key] for key, _ in module.named_parameters(recurse=False)
                if prefix + key in self.names}

    def _first_moving(self, tangents) -> int:
        for i, (module, prefix) in enumerate(zip(self.modules, self.prefixes)):
            if self._tangents(module, prefix, tangents):
                return i
        return len(self.modules) - 1


class _Block:
    """A block of rows after the forward and gradient sweeps: the layers (with their inputs and
    local derivatives), the gradient at every layer's output from the first moving layer on,
    and the loss's state for its product."""

    def __init__(self, layers, grads, state):
        self.layers, self.grads, self.state = layers, grads, state

    def tensors(self):
        for item in (*(t for layer in self.layers for t in vars(layer).values()), *self.grads, self.state):
            yield from (item if isinstance(item, tuple) else (item,))


KEEP_BYTES = 1 << 30


class _Kept:
    """The blocks of each batch of the last pass, kept for the next while they fit in KEEP_BYTES.

    An SLQ or Lanczos run makes tens of passes over the same data at the same parameters, and
    the forward and gradient sweeps do not depend on the columns: kept, an MLP's and a small
    CNN's 8-column passes ran 1.15-1.2x faster on a CPU. A batch's blocks are reused only where
    its inputs, its targets and every parameter (and BatchNorm's running statistics) equal
    copies kept beside them, compared element by element (not trusted to tensor versions: a
    change through ``.data`` or a NumPy view keeps those), and the blocking, the first moving
    layer and the loss's scale are unchanged; anything else is recomputed. A shuffling loader's batches simply never match. A model over
    half the budget keeps nothing (its copy alone would crowd the blocks out)."""

    def __init__(self, params):
        self.params, self.theta = params, None
        self.entries, self.bytes = {}, 0   # batch -> (x, y, setting, blocks, bytes)

    def find(self, batch, x, y, setting):
        if batch is None or batch not in self.entries:
            return None
        if not self._parameters_unchanged():
            self.clear()
            return None
        kx, ky, kept_setting, blocks, _ = self.entries[batch]
        return blocks if kept_setting == setting and _same(x, kx) and _same(y, ky) else None

    def keep(self, batch, x, y, setting, blocks):
        self.drop(batch)
        if batch is None or _bytes(self.params) > KEEP_BYTES // 2:  # a large model: no copy of it
            return
        if not self._parameters_unchanged():
            self.clear()
            self.theta = [p.detach().clone() for p in self.params]
        x_kept, y_kept = x.clone(), y.clone()  # the blocks may hold views of x itself
        size = _bytes([x_kept, y_kept, x, y, *(t for block in blocks for t in block.tensors())])
        if self.bytes + size + _bytes(self.theta) <= KEEP_BYTES:
            self.entries[batch] = (x_kept, y_kept, setting, blocks, size)
            self.bytes += size

    def _parameters_unchanged(self) -> bool:
        return self.theta is not None and all(_same(p, q) for p, q in zip(self.params, self.theta))

    def drop(self, batch):
        entry = self.entries.pop(batch, None)
        if entry is not None:
            self.bytes -= entry[-1]

    def clear(self):
        self.entries, self.bytes = {}, 0


def _same(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def _bytes(tensors) -> int:
    """The memory the tensors hold, a tensor seen twice counted once (a batch's slice of a larger
    data set counts as the slice: the data set is held by its owner whether kept or not)."""
    seen = {(t.data_ptr(), t.shape): t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)}
    return sum(seen.values())


BLOCK_BYTES = 4 << 20
MIN_ROWS = 32


def _blocks(b: int, rows: int, sample_bytes: int) -> tuple[int, int]:
    """(columns, rows) per sweep: all of both where the widest tangent [rows, b, ...] fits in
    BLOCK_BYTES; else fewer rows, down to MIN_ROWS; then fewer columns too."""
    if b * rows * sample_bytes <= BLOCK_BYTES:
        return b, rows
    fit = BLOCK_BYTES // (b * sample_bytes)
    if fit >= MIN_ROWS:
        return b, fit
    cols = max(1, min(b, BLOCK_BYTES // (MIN_ROWS * sample_bytes)))
    return cols, min(rows, max(MIN_ROWS, BLOCK_BYTES // (cols * sample_bytes)))


def _layer(module):
    fn = _elementwise(module)
    if fn is not None:
        return _Elementwise(fn)
    return _LAYERS[type(module)]()


def plan(model, loss, names) -> Plan | str:
    """A ``Plan`` for the model and loss, or a line saying why the sweeps do not cover them."""
    covered = _loss_of(loss)
    if isinstance(covered, str):
        return covered
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not an nn.Sequential"
    modules = list(_flat(model))
    if len({id(m) for m in modules}) < len(modules):
        return "a layer used twice"
    index = {id(m): name for name, m in model.named_modules()}
    named = dict(model.named_parameters())
    prefixes = []
    for module in modules:
        if _elementwise(module) is None and type(module) not in _LAYERS:
            return f"a {type(module).__name__} layer"
        if isinstance(module, _NORMS):
            if module.running_mean is None:  # eval mode would still normalise by the batch
                return f"a {type(module).__name__} layer without running statistics"
        elif any(True for _ in module.buffers(recurse=False)):
            return f"a {type(module).__name__} layer with buffers"
        prefix = index[id(module)] + "."
        for key, p in module.named_parameters(recurse=False):
            if named.get(prefix + key) is not p:
                return "parameters shared between layers"
        prefixes.append(prefix)
    return Plan(modules, prefixes, covered, names)


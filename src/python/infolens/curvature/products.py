"""Curvature-times-block products of one mini-batch, by torch.func.

Each function takes the loss of a batch as a function of the trainable parameters (a dict of
tensors) and a block of tangents (the same dict with a leading axis of b columns) and returns
the block of products, every column in one vectorised call (``vmap`` over the columns, so the
forward and backward work of the batch is shared and only the tangent work is b wide).

* ``hessian_forward_over_reverse``: jvp of the gradient (the torch.func tutorial's recommended
  HVP: lowest memory).
* ``hessian_reverse_over_reverse``: the gradient's graph once (torch.autograd), then a batched
  vjp through it (works where an op has no forward-mode derivative).
* ``hessian_finite_difference``: (grad(theta + e v) - grad(theta - e v)) / 2e, e scaled per
  column; works wherever a gradient does (flash attention, cuDNN RNNs), O(e^2) accurate.
* ``ggn``: J^T H_L J, the model's Jacobian J and the Hessian H_L of the loss in the model's
  outputs; positive semi-definite for convex losses. For softmax cross-entropy and mean squared
  error it is also the (true) Fisher information of the model's likelihood.
* ``empirical_fisher``: sum_i g_i g_i^T over the batch's per-sample gradients g_i.
"""

from __future__ import annotations

import torch
from torch.func import grad, jvp, vjp, vmap


def hessian_forward_over_reverse(f, theta, tangents, chunk):
    g = grad(f)
    return vmap(lambda v: jvp(g, (theta,), (v,))[1], chunk_size=chunk)(tangents)


def hessian_reverse_over_reverse(f, theta, tangents, chunk):
    # torch.autograd, not torch.func: the gradient's graph is built once by a plain backward with
    # create_graph, and the batched vjp through it (is_grads_batched) ran 2.6x faster on a CPU MLP
    # than vjp(grad(f)) under vmap, whose transforms wrap every op of the forward and backward.
    keys = list(theta)
    leaves = [theta[k].detach().requires_grad_() for k in keys]
    with torch.enable_grad():
        gradient = torch.autograd.grad(f(dict(zip(keys, leaves))), leaves, create_graph=True,
                                       materialize_grads=True)
    b = tangents[keys[0]].shape[0]
    step = b if chunk is None else int(chunk)
    blocks = []
    for start in range(0, b, step):
        cols = [tangents[k][start:start + step] for k in keys]
        if step == 1:  # one column: a plain vjp, no batching machinery
            out = torch.autograd.grad(gradient, leaves, [c[0] for c in cols], retain_graph=True,
                                      materialize_grads=True)
            blocks.append([o[None] for o in out])
        else:
            blocks.append(torch.autograd.grad(gradient, leaves, cols, retain_graph=True, is_grads_batched=True,
                                              materialize_grads=True))
    return {k: torch.cat([block[i] for block in blocks]) for i, k in enumerate(keys)}


def hessian_finite_difference(f, theta, tangents, chunk):
    g = grad(f)
    dtype = next(iter(theta.values())).dtype
    size = torch.sqrt(sum(t.detach().square().sum() for t in theta.values()))
    # central differences: the error balance of truncation (e^2) and round-off (eps / e) is at
    # e ~ eps^(1/3), relative to the parameters' scale, per unit tangent
    base = torch.finfo(dtype).eps ** (1 / 3) * max(1.0, float(size))

    def one(v):
        norm = torch.sqrt(sum(t.square().sum() for t in v.values()))
        e = base / torch.clamp(norm, min=torch.finfo(dtype).tiny)
        plus = g({k: theta[k] + e * v[k] for k in theta})
        minus = g({k: theta[k] - e * v[k] for k in theta})
        return {k: (plus[k] - minus[k]) / (2 * e) for k in theta}

    return vmap(one, chunk_size=chunk)(tangents)


HESSIAN_MODES = {"forward-over-reverse": hessian_forward_over_reverse,
                 "reverse-over-reverse": hessian_reverse_over_reverse,
                 "finite-difference": hessian_finite_difference}


def ggn(model_fn, loss_of_output, theta, tangents, chunk):
    """J^T H_L J for the block: model_fn(theta) -> outputs, loss_of_output(outputs) -> loss."""
    outputs = model_fn(theta)
    d_out = vmap(lambda v: jvp(model_fn, (theta,), (v,))[1], chunk_size=chunk)(tangents)
    # the loss Hessian in the outputs by double backward: forward mode lacks some losses'
    # second derivatives (mse_loss), and the outputs are small
    _, loss_hessian = vjp(grad(loss_of_output), outputs.detach())
    h_out = vmap(lambda d: loss_hessian(d)[0], chunk_size=chunk)(d_out)
    # J^T u as the gradient of <f(theta), u>: one batched backward for all columns
    pull = grad(lambda t, u: (model_fn(t) * u).sum())
    return vmap(pull, in_dims=(None, 0), chunk_size=chunk)(theta, h_out)


def empirical_fisher(per_sample_loss, theta, tangents, inputs, targets, chunk):
    """sum_i g_i (g_i . v) over the batch, g_i the gradient of sample i's loss."""
    grads = vmap(grad(per_sample_loss), in_dims=(None, 0, 0), chunk_size=chunk)(theta, inputs, targets)
    flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)           # [batch, P]
    cols = torch.cat([t.reshape(t.shape[0], -1) for t in tangents.values()], dim=1)       # [b, P]
    return flat.T @ (flat @ cols.T)                                                        # [P, b]

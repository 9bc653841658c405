"""The GGN product of a model that ends in a linear softmax cross-entropy head, with the head fused.

For logits z = h W^T + c over a vocabulary of V, the generic GGN product pushes every tangent
through the whole model to the logits and applies the loss Hessian there: b tensors of
[tokens, V] per batch, where large-vocabulary models spend their memory. Here the model is cut
at the head's input h [T, d]: the body's tangents dh [b, T, d] go forward (jvp), the fused head
product (``softmax_ce_ggn``: native C++ for CPU tensors, CUDA for CUDA tensors, the torch
reference otherwise, chosen as every primitive is) applies the logit Hessian in tiles over the
vocabulary, and its out_dh [b, T, d] comes back through the body (one batched vjp) while out_dW
and out_dc are the head parameters' blocks. Nothing [b, T, V] is formed.

When it applies (``find``): the GGN or Fisher (equal for softmax cross-entropy); the loss is
``nn.CrossEntropyLoss`` or ``F.cross_entropy`` with reduction "mean" or "sum", integer targets,
no label smoothing (class weights and ignore_index become per-token weights); and the model's
output IS the output of one ``nn.Linear`` (called once, not changed in place afterwards), or a
view of it with the classes on axis 1 as cross-entropy reads them: ``[N, V]``, ``logits.reshape(-1,
V)`` or ``logits.transpose(1, 2)`` for ``[B, S, V]`` logits. That is checked on the first batch.
A weight tied to an embedding is fine: the body's tangent sees it through the embedding and the
head adds its own block to the same parameter.

The Hessian is left to the generic path: it adds to the GGN the loss gradient times the body's
second derivatives (and the head's W-h cross terms), which the head product does not carry.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from .. import _backend
from ..reference import head as reference

PRIMITIVE = "softmax_ce_ggn"  # its name in _backend's tables


@dataclass
class FusedHead:
    name: str              # the head module's name in the model
    module: nn.Linear
    weight: str | None     # the selected parameter names of the head's weight and bias (None: not selected)
    bias: str | None
    body: bool             # whether any selected parameter reaches the head's input (then dh is needed)
    reduction: str         # of the cross-entropy: "mean" or "sum"
    ignore_index: int
    class_weight: torch.Tensor | None
    engine: str            # "native" or "reference"

    def __str__(self):
        return f"fused softmax cross-entropy head {self.name!r} ({self.engine})"

    def ggn(self, model_fn, theta, tangents, targets, chunk):
        """J^T H J times the tangents for one batch, as ``products.ggn`` computes it, with the head
        fused; model_fn(theta) -> the model's output on the batch."""
        def body(t):  # the model's function up to the head's input
            with _stop_at(self.module):
                try:
                    model_fn(t)
                except _HeadInput as stop:
                    return stop.h
            raise RuntimeError(f"the model did not call its head {self.name!r} on this batch")

        # J v at the logits is dh_v W^T + h dW_v^T + dc_v: the body's part dh_v is a jvp to h
        if self.body:
            h, pull = vjp(body, theta)
            dh = vmap(lambda v: jvp(body, (theta,), (v,))[1], chunk_size=chunk)(tangents)
        else:
            h, dh = body(theta), None
        tokens = h.reshape(-1, h.shape[-1]).contiguous()
        bias = self.module.bias
        out_dh, out_dw, out_db = softmax_ce_ggn(
            self.engine, tokens, self.module.weight.detach().contiguous(), None if bias is None else bias.detach(),
            self.token_weights(targets, tokens.shape[0], tokens.dtype),
            None if dh is None else dh.reshape(dh.shape[0], *tokens.shape).contiguous(),
            _column(tangents, self.weight), _column(tangents, self.bias),
            wanted=(self.body, self.weight is not None, self.bias is not None))
        # J^T u: out_dh goes back through the body (one vjp for all columns); out_dW and out_dc are
        # the head's own blocks, added to whichever parameter they are (a tied weight gets both)
        if self.body:
            out = vmap(lambda u: pull(u)[0], chunk_size=chunk)(out_dh.reshape(dh.shape))
        else:
            out = {name: torch.zeros_like(v) for name, v in tangents.items()}
        for name, block in ((self.weight, out_dw), (self.bias, out_db)):
            if name is not None:
                out[name] = out[name] + block.to(out[name].dtype)
        return out

    def token_weights(self, targets, n_tokens, dtype):
        """The weight of each token's cross-entropy in the batch loss: PyTorch's definition, with
        ignored tokens at 0 and "mean" dividing by the (class-weighted) count of the rest."""
        if targets.numel() != n_tokens:
            raise ValueError(f"targets: {targets.numel()} for {n_tokens} tokens of the head {self.name!r}")
        y = targets.reshape(-1)
        kept = y != self.ignore_index
        weights = kept.to(dtype)
        if self.class_weight is not None:
            weights = weights * self.class_weight.to(dtype)[torch.where(kept, y, 0)]
        if self.reduction == "mean":
            weights = weights / weights.sum()
        return weights.contiguous()


def softmax_ce_ggn(engine, h, w, bias, token_weights, dh, dw, dbias, wanted=(True, True, True)):
    """(out_dh [b, T, d], out_dw [b, V, d], out_dbias [b, V]) by the chosen engine, None where not
    wanted; see infolens/reference/head.py for the function."""
    if engine == "reference":
        outs = reference.softmax_ce_ggn(h, w, bias, token_weights, dh, dw, dbias)
        return tuple(out if want else None for out, want in zip(outs, wanted))
    (T, d), V = h.shape, w.shape[0]
    b = next(t.shape[0] for t in (dh, dw, dbias) if t is not None)
    outs = tuple(torch.empty(shape, dtype=h.dtype, device=h.device) if want else None
                 for shape, want in zip(((b, T, d), (b, V, d), (b, V)), wanted))
    arrays = (h, w, bias, token_weights, dh, dw, dbias, *outs)
    if h.device.type == "cuda":
        _backend._native_cuda.softmax_ce_ggn(*(None if a is None else a.data_ptr() for a in arrays),
                                             T, V, d, b, _backend.CUDA_DTYPES[h.dtype], *_backend.cuda_launch(h.device))
    else:
        _backend._native.softmax_ce_ggn(*(None if a is None else a.numpy() for a in arrays))
    return outs


# ---- finding the head ----------------------------------------------------------------------------


def find(model, loss, kind, head, backend, state, batch):
    """(FusedHead or None, a note saying which or why not). ``head``: "auto" (any nn.Linear whose
    output is the model's), a module or its name (that one; an error if it cannot be fused), or
    None (never). ``state``: (selected parameters, the rest and the buffers) by name; ``batch``:
    a zero-argument function returning the first (inputs, targets), on which the pattern is checked."""
    if head is None:
        return None, "not fused (head=None)"
    try:
        fused = _find(model, loss, kind, head, backend, state, batch)
    except _NotFusable as why:
        if head != "auto":
            raise ValueError(f"head: cannot fuse it: {why}") from None
        return None, f"not fused: {why}"
    return fused, str(fused)


class _NotFusable(Exception):
    pass


def _find(model, loss, kind, head, backend, state, batch):
    if kind not in ("ggn", "fisher"):
        raise _NotFusable(f"kind={kind!r} (the fused head serves the GGN and the Fisher)")
    reduction, ignore_index, class_weight = _cross_entropy(loss)
    modules = dict(model.named_modules())
    if head == "auto":
        candidates = [name for name, m in modules.items() if _is_linear(m)]
    else:
        name = head if isinstance(head, str) else next((n for n, m in modules.items() if m is head), None)
        if name not in modules:
            raise ValueError(f"head: the model has no module {'named ' + repr(head) if name else 'like that'}")
        if not _is_linear(modules[name]):
            raise _NotFusable(f"{name!r} is not an nn.Linear (nor a subclass keeping its forward)")
        candidates = [name]
    name, body = _output_head(model, [(n, modules[n]) for n in candidates], state, batch())
    module = modules[name]
    if module.weight.dtype not in (torch.float32, torch.float64):
        raise _NotFusable(f"the head's dtype is {module.weight.dtype} (float32 or float64 are fused)")
    # the head's parameters among the selected ones, by the selected name (a tied weight has its first name)
    roles = {id(p): role for role, p in module.named_parameters(recurse=False)}
    named = dict(model.named_parameters())
    selected = {roles[id(named[n])]: n for n in state[0] if id(named[n]) in roles}
    device = module.weight.device
    return FusedHead(name, module, selected.get("weight"), selected.get("bias"), body, reduction, ignore_index,
                     None if class_weight is None else class_weight.to(device),
                     _backend.resolve(backend, device, PRIMITIVE))


def _is_linear(module) -> bool:
    """An nn.Linear computing x W^T + c: subclasses that keep its forward, nothing parametrized."""
    return (isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward
            and not torch.nn.utils.parametrize.is_parametrized(module))


def _cross_entropy(loss):
    """(reduction, ignore_index, class weight) of a softmax cross-entropy loss the head can fuse."""
    if loss is torch.nn.functional.cross_entropy:
        return "mean", -100, None
    if not isinstance(loss, nn.CrossEntropyLoss) or type(loss).forward is not nn.CrossEntropyLoss.forward:
        raise _NotFusable("the loss is not nn.CrossEntropyLoss or F.cross_entropy")
    if loss.reduction not in ("mean", "sum"):
        raise _NotFusable(f"reduction={loss.reduction!r} (mean and sum are fused)")
    if loss.label_smoothing != 0:
        raise _NotFusable("label smoothing")
    return loss.reduction, loss.ignore_index, None if loss.weight is None else loss.weight.detach()


def _output_head(model, candidates, state, batch) -> tuple[str, bool]:
    """(the candidate whose output the model returns as cross-entropy reads it, whether any selected
    parameter reaches its input), from one forward on a batch in eval mode. The head must be
    called once and its output not changed afterwards."""
    (x, y), (theta, frozen) = batch, state
    leaves = {name: t.detach().requires_grad_() for name, t in theta.items()}
    calls = {name: [] for name, _ in candidates}

    def record(name):
        # the version counter moves with every in-place change: the output must leave unchanged
        return lambda module, args, output: calls[name].append((args[0] if args else None, output, output._version))

    was_training = model.training
    model.eval()
    handles = [m.register_forward_hook(record(name)) for name, m in candidates]
    try:
        with torch.enable_grad():
            out = functional_call(model, {**frozen, **leaves}, (x,))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for name, seen in calls.items():
        if len(seen) != 1 or seen[0][0] is None:  # called more than once, or with its input by keyword
            continue
        h, logits, version = seen[0]
        if logits._version == version and _classes_on_axis_1(out, logits):
            if y.dtype.is_floating_point or y.dtype == torch.bool:
                raise _NotFusable("the targets are not class indices")
            if tuple(y.shape) != tuple(out.shape[:1] + out.shape[2:]):
                raise _NotFusable(f"targets of shape {tuple(y.shape)} for outputs {tuple(out.shape)}")
            # whatever way a parameter reaches h (a body layer, a weight tied to an embedding), autograd sees it
            reached = h.requires_grad and any(g is not None for g in torch.autograd.grad(
                h, list(leaves.values()), torch.ones_like(h), allow_unused=True))
            return name, reached
    raise _NotFusable("the model's output is not the output of an nn.Linear head (called once, as cross-entropy "
                      "logits: [N, V], logits.reshape(-1, V) or logits.transpose(1, 2))")


def _classes_on_axis_1(out, logits) -> bool:
    """``out`` is ``logits`` [..., V] seen with the classes on axis 1 and the tokens in order."""
    if not isinstance(out, torch.Tensor) or min(out.ndim, logits.ndim) < 2 or out.data_ptr() != logits.data_ptr():
        return False
    views = [logits.movedim(-1, 1)]
    if logits.is_contiguous():
        views.append(logits.reshape(-1, logits.shape[-1]))
    return any(v.shape == out.shape and v.stride() == out.stride() for v in views)


# ---- cutting the model at the head's input -------------------------------------------------------


class _HeadInput(Exception):
    """Carries the head's input out of the model's forward, so that the head is not run: the one way
    to leave any model's forward early from outside it. It is caught inside the function torch.func
    transforms, so the tensor it carries stays at that function's level."""

    def __init__(self, h):
        super().__init__()
        self.h = h


@contextlib.contextmanager
def _stop_at(module):
    def hook(_, args):
        raise _HeadInput(args[0])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _column(tangents, name):
    return None if name is None else tangents[name].contiguous()

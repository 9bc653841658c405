"""The curvature of a model's loss over a data set, as an operator on blocks of vectors.

``CurvatureOperator(model, loss, data, kind=..., params=..., mode=...)`` is an
``infolens.linalg.Operator`` on the flattened trainable parameters: ``op(V [P, b])`` makes ONE
pass over the data and returns the curvature times all b columns, so every estimator in
``infolens.linalg`` (Hutchinson and Hutch++ traces, block Lanczos, deflated SLQ) pays one data
pass per block step, never one per vector.

Conventions:

* ``loss(outputs, targets)`` returns the MEAN over the batch (PyTorch's default reduction). The
  data-set curvature is the sum over batches weighted by batch size / N, which is the curvature
  of the mean loss over all N samples whatever the batching (an unweighted mean of batches is
  biased when the last batch is smaller).
* ``data``: a pair of tensors (inputs, targets), split into batches of ``batch_size``, or any
  iterable of (inputs, targets) batches such as a DataLoader (iterated once per product).
* ``kind``: "hessian"; "ggn" (generalised Gauss-Newton J^T H_L J); "fisher", the true Fisher
  information, which for softmax cross-entropy and mean squared error (the likelihoods whose
  natural parameters are the outputs) equals the GGN and is computed as such; "empirical-fisher"
  (sum of per-sample gradient outer products / N).
* ``mode`` (Hessian only): "auto" times forward-over-reverse and reverse-over-reverse (vectorised,
  and the latter also column by column) on the first batch and keeps the fastest that works for
  this model; central finite differences only where neither works.
* BatchNorm and dropout: products run with the model in eval mode (running statistics, no
  dropout), restored afterwards, so that every pass sees the same deterministic function; in
  train mode BatchNorm would couple the samples of a batch and dropout would make the operator
  random, and neither is a curvature of the loss the model is evaluated with.
* ``chunk``: columns per vectorised call (memory grows with it); None = all b at once. An
  out-of-memory error halves it and retries.
* ``head`` (GGN and Fisher): a model whose output is the logits of an ``nn.Linear`` head under
  softmax cross-entropy (``nn.CrossEntropyLoss`` / ``F.cross_entropy``, mean or sum, any
  ignore_index and class weights, no label smoothing) gets its head fused (``head.py``): the
  body's tangents meet the fused head product at the head's input, so no [b, tokens, V] tensor is
  formed; same product, to rounding. "auto" finds such a head (checked on the first batch) and
  otherwise uses the generic path; a module or its name insists on that one; None opts out.
  ``op.head`` is the fused head (None if not) and ``op.head_note`` says which or why not. A
  language model returns ``logits.transpose(1, 2)`` ([B, V, S], cross-entropy's class axis) for
  targets [B, S], or ``logits.reshape(-1, V)`` for flattened targets.
* ``backend``: the fused head's engine, "auto" | "native" | "reference" as for every primitive.
"""

from __future__ import annotations

import math
import time

import torch
from torch.func import functional_call

from .. import linalg
from . import head as heads
from . import products

KINDS = ("hessian", "ggn", "fisher", "empirical-fisher")
MODES = ("auto",) + tuple(products.HESSIAN_MODES)


def _batches(data, batch_size):
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"data: inputs and targets must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
        step = x.shape[0] if batch_size is None else int(batch_size)
        if step < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        return lambda: ((x[i:i + step], y[i:i + step]) for i in range(0, x.shape[0], step))
    if hasattr(data, "__iter__"):
        return lambda: iter(data)
    raise TypeError("data must be a pair of tensors (inputs, targets) or an iterable of (inputs, targets) batches")


def _selected(model, params):
    named = dict(model.named_parameters())
    if params is None:
        return [name for name, p in named.items() if p.requires_grad]
    if isinstance(params, torch.nn.Module):
        wanted = {id(p) for p in params.parameters()}
        return [name for name, p in named.items() if id(p) in wanted]
    names = []
    for item in params:
        if isinstance(item, str):
            if item not in named:
                raise ValueError(f"params: the model has no parameter named {item!r}")
            names.append(item)
        else:
            match = [name for name, p in named.items() if p is item]
            if not match:
                raise ValueError("params: a tensor that is not a parameter of the model")
            names.append(match[0])
    return names


class CurvatureOperator(linalg.Operator):
    def __init__(self, model: torch.nn.Module, loss, data, *, kind: str = "ggn", params=None,
                 mode: str = "auto", batch_size: int | None = None, chunk: int | None = None,
                 head="auto", backend: str = "auto"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model, self.loss, self.kind, self.mode = model, loss, kind, mode
        self.names = _selected(model, params)
        if not self.names:
            raise ValueError("params: no trainable parameters selected")
        named = dict(model.named_parameters())
        self.shapes = [named[name].shape for name in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.batches = _batches(data, batch_size)
        self.n_samples = sum(int(x.shape[0]) for x, _ in self.batches())
        if self.n_samples == 0:
            raise ValueError("data holds no samples")
        self.chunk = chunk
        first = named[self.names[0]]
        super().__init__(self._matmul, sum(self.sizes), device=first.device)
        self.dtype = first.dtype
        self.head, self.head_note = heads.find(model, loss, kind, head, backend, self._state(), self._first_batch)

    def __repr__(self) -> str:
        return (f"CurvatureOperator(kind={self.kind!r}, n={self.n}, head: {self.head_note}, device={self.device}, "
                f"calls={self.calls})")

    def _first_batch(self):
        x, y = next(iter(self.batches()))
        return x.to(self.device), y.to(self.device)

    # flat [P, b] <-> {name: [b, *shape]}
    def _split(self, v: torch.Tensor) -> dict:
        cols = v.T.to(self.dtype)
        parts = torch.split(cols, self.sizes, dim=1)
        return {name: part.reshape(-1, *shape) for name, part, shape in zip(self.names, parts, self.shapes)}

    def _join(self, block) -> torch.Tensor:
        if isinstance(block, torch.Tensor):
            return block
        return torch.cat([block[name].reshape(block[name].shape[0], -1) for name in self.names], dim=1).T

    def _state(self):
        theta = {name: p.detach() for name, p in self.model.named_parameters() if name in self.names}
        frozen = {name: p.detach() for name, p in self.model.named_parameters() if name not in self.names}
        frozen.update(dict(self.model.named_buffers()))
        return theta, frozen

    def _batch_product(self, theta, frozen, x, y, tangents, chunk):
        def model_fn(t, inputs=x):
            return functional_call(self.model, {**frozen, **t}, (inputs,))

        if self.kind == "empirical-fisher":
            def per_sample(t, xi, yi):
                return self.loss(model_fn(t, xi[None]), yi[None])
            return products.empirical_fisher(per_sample, theta, tangents, x, y, chunk)
        if self.head is not None:
            return self.head.ggn(model_fn, theta, tangents, y, chunk)
        if self.kind in ("ggn", "fisher"):
            return products.ggn(model_fn, lambda out: self.loss(out, y), theta, tangents, chunk)

        def f(t):
            return self.loss(model_fn(t), y)

        if self.mode != "auto":
            return products.HESSIAN_MODES[self.mode](f, theta, tangents, chunk)
        return self._choose_mode(f, theta, tangents, chunk)

    def _choose_mode(self, f, theta, tangents, chunk):
        """mode="auto", on the first batch: every exact mode that works for this model is timed
        (vectorised over the columns, and reverse-over-reverse also one column at a time), and the
        fastest is kept for every later product; finite differences only where none works.
        Which wins depends on the model and the device: on a CPU, vectorised convolutions ran 2x
        slower than a loop over columns, while an MLP's products ran fastest vectorised."""
        candidates = [("forward-over-reverse", chunk), ("reverse-over-reverse", chunk)]
        if chunk is None or chunk > 1:
            candidates.append(("reverse-over-reverse", 1))
        best, errors = None, []
        for name, columns in candidates:
            try:
                start = self._clock()
                out = products.HESSIAN_MODES[name](f, theta, tangents, columns)
                seconds = self._clock() - start
            except (RuntimeError, NotImplementedError) as exc:
                if _out_of_memory(exc):
                    raise
                errors.append(f"{name}: {exc}")
                continue
            if best is None or seconds < best[0]:
                best = (seconds, name, columns, out)
        if best is not None:
            _, self.mode, columns, out = best
            self.chunk = columns
            return out
        try:
            out = products.hessian_finite_difference(f, theta, tangents, chunk)
        except (RuntimeError, NotImplementedError) as exc:
            if _out_of_memory(exc):
                raise
            errors.append(f"finite-difference: {exc}")
            raise RuntimeError("no Hessian-vector product mode works for this model:\n" + "\n".join(errors)) from exc
        self.mode = "finite-difference"
        return out

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _matmul(self, v: torch.Tensor) -> torch.Tensor:
        chunk = self.chunk
        while True:
            try:
                return self._pass(v, chunk)
            except (RuntimeError, MemoryError) as exc:
                if not _out_of_memory(exc) or (chunk is not None and chunk <= 1):
                    raise
                chunk = max(1, (v.shape[1] if chunk is None else chunk) // 2)
                self.chunk = chunk

    def _pass(self, v: torch.Tensor, chunk) -> torch.Tensor:
        theta, frozen = self._state()
        tangents = self._split(v)
        total = None
        was_training = self.model.training
        self.model.eval()
        try:
            for x, y in self.batches():
                x, y = x.to(self.device), y.to(self.device)
                product = self._batch_product(theta, frozen, x, y, tangents, chunk)
                weight = 1.0 / self.n_samples if self.kind == "empirical-fisher" else x.shape[0] / self.n_samples
                total = _accumulate(total, product, weight)
        finally:
            self.model.train(was_training)
        # summed in the products' own dtype, per parameter, and joined and widened once: per-batch
        # float64 copies of the [P, b] block took a third of an MLP's product time
        return self._join(total).to(torch.float64)


def _accumulate(total, product, weight: float):
    """total + weight * product, for a block held as one tensor or as a dict of tensors."""
    if isinstance(product, torch.Tensor):
        return product * weight if total is None else total.add_(product, alpha=weight)
    if total is None:
        return {k: p * weight for k, p in product.items()}
    for k, p in product.items():
        total[k].add_(p, alpha=weight)
    return total


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()

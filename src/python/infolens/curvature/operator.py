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
* ``mode``: how a batch's product is computed. For the Hessian, "forward-over-reverse",
  "reverse-over-reverse" and "finite-difference" (autograd, ``products.py``) or "sequential" (the
  layer-by-layer sweeps of ``sequential.py``, for an ``nn.Sequential`` or torch.fx-traceable
  graph of common layers, residual sums included, under cross-entropy or squared error); for
  the GGN and Fisher, "generic" (autograd) or "sequential".
  "auto" times every one that applies on the first batch (on its first ``CONTEST_COLUMNS``
  columns; reverse-over-reverse also column by column) and keeps the fastest, which computes
  the rest; the sequential sweeps must also agree with autograd's product
  there, or they are not used (``op.mode_note`` says which won, or why the sweeps were not used).
  Central finite differences only where no exact Hessian mode works.
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
from . import products, sequential

KINDS = ("hessian", "ggn", "fisher", "empirical-fisher")
MODES = ("auto",) + tuple(products.HESSIAN_MODES) + ("sequential", "generic")
# "auto" times its candidates on this many columns: on all of a 48-probe Hutchinson block, a
# small CNN's single pass took 52 s on a CPU against 29 s (the losers' time is spent for nothing)
CONTEST_COLUMNS = 8


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
        counts = [(int(x.shape[0]), _terms(loss, y)) for x, y in self.batches()]
        self.n_samples = sum(n for n, _ in counts)
        if self.n_samples == 0:
            raise ValueError("data holds no samples")
        self.n_terms = sum(t for _, t in counts if t is not None)
        if self.n_terms == 0 and any(t is not None for _, t in counts):
            raise ValueError("data: every target is ignored (ignore_index, or class weights of 0): the mean loss "
                             "has no terms, so it has no curvature")
        self.chunk = chunk
        first = named[self.names[0]]
        super().__init__(self._matmul, sum(self.sizes), device=first.device, dtype=first.dtype)
        self.any_layout = True  # _split reads the columns as rows: a transposed block is free
        self.head, self.head_note = heads.find(model, loss, kind, head, backend, self._state(), self._first_batch)
        self.plan = sequential.plan(model, loss, self.names)
        allowed = {"hessian": MODES[:-1], "empirical-fisher": ("auto", "generic")}.get(kind, ("auto", "sequential", "generic"))
        if mode not in allowed:
            raise ValueError(f"mode {mode!r} is not a way to compute the {kind} product; use one of {allowed}")
        if mode == "sequential" and isinstance(self.plan, str):
            raise ValueError(f"mode 'sequential' does not cover this model: {self.plan}")
        self.mode_note = "chosen on the first product" if mode == "auto" else "given"

    def __repr__(self) -> str:
        return (f"CurvatureOperator(kind={self.kind!r}, n={self.n}, head: {self.head_note}, device={self.device}, "
                f"calls={self.calls})")

    def _first_batch(self):
        x, y = next(iter(self.batches()))
        return x.to(self.device), y.to(self.device)

    # flat [P, b] <-> {name: [b, *shape]}
    def _split(self, v: torch.Tensor) -> dict:
        # one contiguous [b, *shape] copy per parameter, converted on the way (a strided block
        # would be copied again by every batch's product that flattens it)
        out = {}
        for name, shape, cols in zip(self.names, self.shapes, torch.split(v.T, self.sizes, dim=1)):
            out[name] = torch.empty(cols.shape[0], *shape, dtype=self.dtype, device=v.device)
            out[name].view(cols.shape[0], -1).copy_(cols)
        return out

    def _join(self, block) -> torch.Tensor:
        """[P, b] float64 from a block held as one tensor or per parameter ({name: [b, *shape]}):
        each part widened into its place in [b, P] rows (a contiguous conversion, 3x faster than
        widening the transposed view, and no joined temporary), returned as their transpose."""
        if isinstance(block, torch.Tensor):
            return block.to(torch.float64)
        first = block[self.names[0]]
        rows = torch.empty(first.shape[0], self.n, dtype=torch.float64, device=first.device)
        for name, place in zip(self.names, torch.split(rows, self.sizes, dim=1)):
            place.copy_(block[name].reshape(place.shape))
        return rows.T

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
        if self.mode != "auto":
            return self._ways(model_fn, theta, x, y, tangents)[self.mode](chunk)
        b = next(iter(tangents.values())).shape[0]
        if b <= CONTEST_COLUMNS:
            return self._choose_mode(self._ways(model_fn, theta, x, y, tangents), chunk)
        # the contest on a few columns (every losing way's time is spent for nothing), the winner
        # on the rest
        few = {k: t[:CONTEST_COLUMNS] for k, t in tangents.items()}
        others = {k: t[CONTEST_COLUMNS:] for k, t in tangents.items()}
        first = self._choose_mode(self._ways(model_fn, theta, x, y, few), chunk)
        rest = self._ways(model_fn, theta, x, y, others)[self.mode](self.chunk)
        return {k: torch.cat([first[k], rest[k]]) for k in first}

    def _ways(self, model_fn, theta, x, y, tangents) -> dict:
        """The ways of computing this kind's product for the batch: name -> f(chunk)."""
        if self.kind == "hessian":
            def f(t):
                return self.loss(model_fn(t), y)
            ways = {name: (lambda c, fn=fn: fn(f, theta, tangents, c)) for name, fn in products.HESSIAN_MODES.items()}
        else:
            ways = {"generic": lambda c: products.ggn(model_fn, lambda out: self.loss(out, y), theta, tangents, c)}
        if not isinstance(self.plan, str):
            ways["sequential"] = lambda c: self.plan.product(theta, tangents, x, y, second=self.kind == "hessian",
                                                             chunk=c)
        return ways

    def _choose_mode(self, ways, chunk):
        """mode="auto", on the first batch: every exact way that applies is timed (vectorised over
        the columns; autograd's reverse-over-reverse also one column at a time) and the fastest
        is kept for every later product; finite differences only where none works. Which wins
        depends on the model and the device: on a CPU, the sequential sweeps ran an MLP's
        Hessian products 1.3x faster than autograd, while a small CNN's ran fastest column by
        column in autograd. The sweeps must agree with autograd's product (to 1e-4 of its
        largest entry in float32, 1e-8 in float64), or they are not used."""
        names = ["forward-over-reverse", "reverse-over-reverse"] if self.kind == "hessian" else ["generic"]
        candidates = [(name, chunk) for name in names]
        if self.kind == "hessian" and (chunk is None or chunk > 1):
            candidates.append(("reverse-over-reverse", 1))
        if "sequential" in ways:
            candidates.append(("sequential", chunk))
        best, errors, reference = None, [], None
        for name, columns in candidates:
            try:
                start = self._clock()
                out = ways[name](columns)
                seconds = self._clock() - start
            except Exception as exc:
                # an op autograd lacks rules out its way; the sweeps are only a faster way, and
                # whatever stops them, autograd remains
                expected = name == "sequential" or isinstance(exc, (RuntimeError, NotImplementedError))
                if _out_of_memory(exc) or not expected:
                    raise
                errors.append(f"{name}: {exc}")
                continue
            if name == "sequential" and reference is not None:
                gap = _disagreement(out, reference)
                if gap > (1e-4 if self.dtype == torch.float32 else 1e-8):
                    errors.append(f"sequential: differs from autograd by {gap:.1e} of the largest entry")
                    continue
            reference = out if reference is None else reference
            if best is None or seconds < best[0]:
                best = (seconds, name, columns, out)
        if best is not None:
            _, self.mode, columns, out = best
            self.chunk = columns
            self.mode_note = f"fastest on the first batch: {self.mode}" + "".join(f"; {e}" for e in errors)
            return out
        if self.kind != "hessian":
            raise RuntimeError("no way to compute the product works for this model:\n" + "\n".join(errors))
        try:
            out = ways["finite-difference"](chunk)
        except (RuntimeError, NotImplementedError) as exc:
            if _out_of_memory(exc):
                raise
            errors.append(f"finite-difference: {exc}")
            raise RuntimeError("no Hessian-vector product mode works for this model:\n" + "\n".join(errors)) from exc
        self.mode = "finite-difference"
        self.mode_note = "finite differences: no exact mode works; " + "; ".join(errors)
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
                if not isinstance(self.plan, str):  # the sweeps kept from the last pass go first
                    self.plan.kept.clear()
                chunk = max(1, (v.shape[1] if chunk is None else chunk) // 2)
                self.chunk = chunk

    def _pass(self, v: torch.Tensor, chunk) -> torch.Tensor:
        theta, frozen = self._state()
        tangents = self._split(v)
        total = None
        was_training = self.model.training
        self.model.eval()
        try:
            for i, (x, y) in enumerate(self.batches()):
                x, y = x.to(self.device), y.to(self.device)
                weight = 1.0 / self.n_samples if self.kind == "empirical-fisher" else self._weight(y)
                if weight == 0:  # every target of the batch ignored: no share of the loss (its mean is NaN)
                    continue
                if self.mode == "sequential" and self.head is None and self.kind != "empirical-fisher":
                    # the sweeps add each batch's share into the running sum themselves
                    total = self.plan.product(theta, tangents, x, y, second=self.kind == "hessian", chunk=chunk,
                                              scale=weight, into=total, batch=i)
                else:
                    total = _accumulate(total, self._batch_product(theta, frozen, x, y, tangents, chunk), weight)
                    chunk = self.chunk  # the contest's winner may come with its own
        finally:
            self.model.train(was_training)
        # summed in the products' own dtype, per parameter, and joined and widened once: per-batch
        # float64 copies of the [P, b] block took a third of an MLP's product time
        return self._join(total)


    def _weight(self, y) -> float:
        """The batch's share of the data set's loss: the terms its mean runs over (samples, or
        targets not ignored) over all of them; 1 for a summed loss."""
        terms = _terms(self.loss, y)
        return 1.0 if terms is None else terms / max(self.n_terms, 1)


def _terms(loss, y):
    """How many terms a batch's mean loss averages over: the samples, or for cross-entropy with
    class-index targets the targets not ignored (ignore_index) and, with class weights, their
    total weight; None for a summed loss (each batch then counts in full)."""
    reduction = getattr(loss, "reduction", "mean")
    if reduction == "sum":
        return None
    if isinstance(loss, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)) and not y.is_floating_point():
        kept = y[y != loss.ignore_index]
        return float(loss.weight.to(kept.device)[kept].sum()) if loss.weight is not None else int(kept.numel())
    return int(y.shape[0])


def _accumulate(total, product, weight: float):
    """total + weight * product, for a block held as one tensor or as a dict of tensors."""
    if isinstance(product, torch.Tensor):
        return product * weight if total is None else total.add_(product, alpha=weight)
    if total is None:
        return {k: p * weight for k, p in product.items()}
    for k, p in product.items():
        total[k].add_(p, alpha=weight)
    return total


def _disagreement(a: dict, b: dict) -> float:
    """The largest entrywise difference of two products, relative to the largest entry of b."""
    top = max(float(t.abs().max()) for t in b.values())
    return max(float((a[k] - b[k]).abs().max()) for k in b) / max(top, torch.finfo(torch.float64).tiny)


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()

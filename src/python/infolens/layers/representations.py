"""Per-layer divergence between a model's representations of its training and test data.

The "generalisation funnel": pass the training inputs and held-out test inputs through the
trained model and, at each layer, estimate D(train || test) between the two clouds of
activations. If train and test are samples of one distribution, the inputs do not diverge, and
by the data-processing inequality a map that did not depend on the particular training points
could not make them diverge either. So a divergence that grows at some layer is that layer
treating the points it was fitted to differently from fresh ones: it is where the network
memorises. Early layers usually stay near 0 (generic features); the layers where the curve
rises locate the memorisation. Estimates at different widths carry different kNN biases, so read
the profile across layers, and against the same model on fresh-vs-fresh splits, not as absolutes.

Activations are captured with forward hooks, in eval mode, under ``torch.no_grad``; each output
is flattened to [samples, features] (batch first). At most ``max_samples`` rows of each set are
kept, a uniform sample without replacement chosen by seeded random keys: tensors are subsampled
before the forward pass; data loaders are streamed, keeping the rows with the smallest keys, so
memory stays O(max_samples) per layer. The divergence is ``infolens.kl_divergence`` (one
definition of the estimator, Wang-Kulkarni-Verdu kNN).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from ..knn import kl_divergence
from .capture import model_device, outputs_of
from ._select import check_model, select_layers


def representation_divergence(model, train, test, layers=None, k: int = 3, max_samples: int | None = 5000,
                              seed: int = 0, *, batch_size: int = 512, **estimator_kwargs) -> dict:
    """name -> ``Estimate`` of D(train activations || test activations) at each layer.

    ``train``, ``test``: input tensors (samples first), or iterables such as DataLoaders yielding
    ``x`` or ``(x, y, ...)`` batches (the first element is the input). Tensors are moved to the
    model's device and fed in chunks of ``batch_size``; loader batches are fed as they come.
    ``layers``: None (every nn.Linear / nn.Conv1d/2d/3d output) or names / modules of ``model``,
    any kind: a module's output (the first element when it returns a tuple) is what is compared.
    ``max_samples``: rows kept from each set (None keeps all). ``seed`` seeds the subsampling
    (train with ``seed``, test with ``seed + 1``) and is passed on to the estimator for its jitter.
    ``k`` and ``estimator_kwargs`` (metric, base, backend, jitter) go to ``kl_divergence``.

    Rows that repeat exactly (dead ReLU units can map many inputs to zero) make the kNN estimate
    infinite; the estimator refuses those, and the error says which layer: pass ``jitter=...``.
    The model's and every submodule's training mode are restored, and hooks removed, on return
    or error.
    """
    check_model(model)
    chosen = select_layers(model, layers)
    if max_samples is not None and (not isinstance(max_samples, numbers.Integral) or isinstance(max_samples, bool)
                                    or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    train_acts = _activations(model, chosen, train, "train", max_samples, seed, batch_size)
    test_acts = _activations(model, chosen, test, "test", max_samples, seed + 1, batch_size)
    result = {}
    for name in chosen:
        p, q = train_acts[name], test_acts[name]
        try:
            est = kl_divergence(p, q, k=k, seed=seed, **estimator_kwargs)
        except ValueError as exc:
            raise ValueError(f"layer {name!r}: {exc} "
                             "(p_samples: the train activations, q_samples: the test ones)") from exc
        est.details.update(layer=name, features=p.shape[1], n_train=p.shape[0], n_test=q.shape[0])
        result[name] = est
    return result


def _batches(data, name: str, max_samples, seed: int, batch_size: int):
    """(inputs, keys) batches: tensors are subsampled first, other iterables streamed."""
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        if data.ndim == 0 or data.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one sample, got shape {tuple(data.shape)}")
        keys = torch.rand(data.shape[0], generator=gen, dtype=torch.float64)
        order = torch.argsort(keys)[:max_samples]
        for start in range(0, order.numel(), batch_size):
            idx = order[start:start + batch_size]
            yield data[idx.to(data.device)], keys[idx]
        return
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(f"{name} must be a tensor or an iterable of batches (a DataLoader), "
                        f"got {type(data).__name__}") from None
    for batch in iterator:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must yield tensors x or (x, y) tuples, got a batch of {type(x).__name__}")
        if x.ndim == 0:
            raise ValueError(f"{name} yielded a 0-dimensional batch; batches are samples first")
        yield x, torch.rand(x.shape[0], generator=gen, dtype=torch.float64)


def _activations(model: nn.Module, chosen: dict, data, name: str, max_samples, seed: int, batch_size: int) -> dict:
    """name -> [rows, features] activations of ``data`` at each chosen layer (subsampled)."""
    device = model_device(model)
    keys_kept = None
    rows: dict = {}
    with outputs_of(model, chosen, name) as forward:
        for x, keys in _batches(data, name, max_samples, seed, batch_size):
            flat = forward(x.to(device) if device is not None else x)
            for layer, out in flat.items():
                if layer in rows and rows[layer].shape[1] != out.shape[1]:
                    raise ValueError(f"layers: {layer!r} gave {out.shape[1]} features for one batch of {name} and "
                                     f"{rows[layer].shape[1]} for another; every batch must give the same")
            keys_kept, rows = _keep_smallest(keys_kept, rows, keys, flat, max_samples)
    if keys_kept is None or keys_kept.numel() == 0:
        raise ValueError(f"{name} yielded no samples")
    return rows


def _keep_smallest(keys_kept, rows, keys, flat, max_samples):
    """Merge a batch into the kept rows, keeping the ``max_samples`` with the smallest keys."""
    if keys_kept is None:
        keys_all, rows_all = keys, flat
    else:
        keys_all = torch.cat([keys_kept, keys])
        rows_all = {layer: torch.cat([rows[layer], flat[layer]]) for layer in flat}
    if max_samples is None or keys_all.numel() <= max_samples:
        return keys_all, rows_all
    keep = torch.argsort(keys_all)[:max_samples]
    return keys_all[keep], {layer: r[keep.to(r.device)] for layer, r in rows_all.items()}

"""The outputs of chosen layers during a model's forward pass, by forward hooks.

``outputs_of(model, chosen, name)`` is a context: inside it, ``forward(x)`` runs the model in
eval mode without gradients and returns each chosen layer's output flattened to [rows,
features]; on leaving it, however it is left, the hooks are removed and every submodule's own
training flag is restored. A layer that does not run, runs twice in one pass, returns no tensor
or is not batch-first is refused with an error naming it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def model_device(model: nn.Module):
    """The device of the model's first parameter (or buffer); None for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


@contextmanager
def outputs_of(model: nn.Module, chosen: dict, name: str):
    captured: dict = {}

    def hook_for(layer):
        def hook(module, inputs, output):
            if layer in captured:
                raise ValueError(f"layers: {layer!r} ran more than once in one forward pass, so its outputs "
                                 "are not one row per sample")
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"layers: {layer!r} returned a {type(out).__name__}, not a tensor")
            captured[layer] = out.detach()
        return hook

    def forward(x: torch.Tensor) -> dict:
        captured.clear()
        model(x)
        flat = {}
        for layer in chosen:
            if layer not in captured:
                raise ValueError(f"layers: {layer!r} did not run in the forward pass of {name}")
            out = captured[layer]
            out = out.reshape(out.shape[0], -1) if out.ndim > 0 else out.reshape(1, 1)
            if out.shape[0] != x.shape[0]:
                raise ValueError(f"layers: {layer!r} output has {out.shape[0]} rows for a batch of "
                                 f"{x.shape[0]} samples of {name}; outputs must be batch first")
            flat[layer] = out
        return flat

    modes = [(m, m.training) for m in model.modules()]
    handles = [module.register_forward_hook(hook_for(layer)) for layer, module in chosen.items()]
    try:
        model.eval()
        with torch.no_grad():
            yield forward
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes:
            module.training = mode

"""Which submodules of a model a per-layer diagnostic looks at.

Layers are named as ``model.named_modules()`` names them (``"features.0"``, ``"fc"``; the model
itself is ``""``). ``layers=None`` means every ``nn.Linear`` and ``nn.Conv1d/2d/3d``; otherwise
``layers`` is one name or module, or a list of them, and anything that is not in the model is
refused with a ``ValueError`` naming ``layers``.
"""

from __future__ import annotations

from torch import nn

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def select_layers(model: nn.Module, layers, kinds: tuple | None = None) -> dict[str, nn.Module]:
    """name -> module for the selected layers, in the model's own order.

    With ``layers=None`` the selection is every module of type ``WEIGHT_LAYERS``. ``kinds``, when
    given, is what an explicitly named layer must be (an error names the layer and its type).
    """
    check_model(model)
    named = dict(model.named_modules())
    if layers is None:
        chosen = {name: m for name, m in named.items() if isinstance(m, WEIGHT_LAYERS)}
        if not chosen:
            raise ValueError("model has no nn.Linear or nn.Conv1d/2d/3d layer; "
                             "name the layers to use with layers=[...]")
        return chosen
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError("layers must be None, a module name, a module, or a list of them, "
                        f"got {type(layers).__name__}") from None
    if not layers:
        raise ValueError("layers is empty; pass None for every nn.Linear / nn.Conv layer")
    name_of = {id(m): name for name, m in named.items()}
    chosen = {}
    for item in layers:
        if isinstance(item, str):
            if item not in named:
                known = [n for n in named if n]
                shown = ", ".join(repr(n) for n in known[:12]) + (", ..." if len(known) > 12 else "")
                raise ValueError(f"layers: the model has no submodule named {item!r} (it has {shown or 'none'})")
            name = item
        elif isinstance(item, nn.Module):
            if id(item) not in name_of:
                raise ValueError(f"layers: the {type(item).__name__} given is not a submodule of model")
            name = name_of[id(item)]
        else:
            raise TypeError(f"layers must hold module names or modules, got {type(item).__name__}")
        module = named[name]
        if kinds is not None and not isinstance(module, kinds):
            allowed = " / ".join(k.__name__ for k in kinds)
            raise ValueError(f"layers: {name!r} is a {type(module).__name__}, not an {allowed}")
        chosen[name] = module
    return chosen

"""The model as a graph of calls the layer-by-layer sweeps know (see ``sequential.py``).

An ``nn.Sequential`` (nested or not) is a chain of its layers. Any other module is traced by
torch.fx: the layers it calls become nodes, and so do the few functions the sweeps know
(activations, pooling, flattening, reshaping, permuting the axes, means and sums over axes,
products with a constant, the sum of two tensors, as in a residual block, concatenation, and the
sizes a reshape reads), each only where it leaves the samples' axis alone. Anything else in the
graph (another function, a parameter read directly, a second input) is named in the reason the
sweeps give for not covering the model.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Add, Cat, PerChannel, Rearranged, Reduced, Scaled, Standardized


class Arg:
    """Another node's value inside a call's arguments (a size, for a reshape)."""

    def __init__(self, index: int):
        self.index = index


class Node:
    """One call: ``kind`` "layer" (a module, or a function applied to one tensor: ``fn``),
    "join" (of several tensors: ``fn(*args)`` makes its sweeps, ``layers.Add`` or ``Cat``) or
    "value" (a size or shape, read by a reshape). ``inputs``: node indices, -1 for the model's
    input."""

    def __init__(self, kind: str, inputs: tuple, module=None, prefix: str = "", fn=None, args=()):
        self.kind, self.inputs = kind, inputs
        self.module, self.prefix = module, prefix
        self.fn, self.args = fn, args

    def call(self, values):
        """What the layer applies to its input, with any node-valued arguments filled in."""
        if self.fn is None:
            return self.module
        args = tuple(values[a.index] if isinstance(a, Arg) else a for a in self.args)
        return lambda h: self.fn(h, *args)


# sizes a reshape may read: x.size(d), x.shape and its items
_VALUES = {"size": lambda h, *a: h.size(*a), operator.getitem: lambda h, k: h[k]}


def _shape(h, _):
    return h.shape


def _reshape(method):
    return lambda h, *shape: getattr(h, method)(*shape)


# activation functions (and tensor methods) by the module class each stands for
_ACTIVATIONS = {F.relu: nn.ReLU, torch.relu: nn.ReLU, "relu": nn.ReLU, torch.tanh: nn.Tanh, F.tanh: nn.Tanh,
                "tanh": nn.Tanh, torch.sigmoid: nn.Sigmoid, F.sigmoid: nn.Sigmoid, "sigmoid": nn.Sigmoid,
                F.silu: nn.SiLU}


# pooling functions by the module each stands for (the same arguments)
_POOLS = {F.max_pool1d: nn.MaxPool1d, F.max_pool2d: nn.MaxPool2d, F.max_pool3d: nn.MaxPool3d,
          F.avg_pool1d: nn.AvgPool1d, F.avg_pool2d: nn.AvgPool2d, F.avg_pool3d: nn.AvgPool3d,
          F.adaptive_avg_pool1d: nn.AdaptiveAvgPool1d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
          F.adaptive_avg_pool3d: nn.AdaptiveAvgPool3d}
# changes of shape alone, by the tensor method each stands for (squeeze and unsqueeze with an
# axis, never the samples')
_SHAPES = {"squeeze": "squeeze", torch.squeeze: "squeeze", "unsqueeze": "unsqueeze", torch.unsqueeze: "unsqueeze",
           "contiguous": "contiguous"}
_CATS = (torch.cat, torch.concat, torch.concatenate)
# products with a constant c: the factor each applies
_SCALES = {operator.mul: lambda c: c, "mul": lambda c: c, operator.truediv: lambda c: 1 / c, "div": lambda c: 1 / c}


def _function_module(target, args, kwargs):
    """The module a traced function call stands for, or None."""
    if _computed((*args, *kwargs.values())):
        return None
    if target in _POOLS:
        try:
            return _POOLS[target](*args, **kwargs)
        except TypeError:
            return None
    if target in ("mean", "sum", torch.mean, torch.sum):
        given = {**dict(zip(("dim", "keepdim"), args)), **kwargs}
        dims = given.get("dim")
        dims = (dims,) if isinstance(dims, int) else dims
        if set(given) <= {"dim", "keepdim"} and isinstance(dims, (tuple, list)) and _ints(dims) \
                and isinstance(given.get("keepdim", False), bool):
            return Reduced(dims, given.get("keepdim", False), target in ("mean", torch.mean))
        return None
    if target in ("permute", torch.permute):
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else kwargs.get("dims", args)
        return Rearranged(dims=tuple(dims)) if _ints(dims) and set(kwargs) <= {"dims"} else None
    if target in ("transpose", torch.transpose):
        return Rearranged(swap=tuple(args)) if len(args) == 2 and _ints(args) and not kwargs else None
    if target in _ACTIVATIONS and not args and not {k for k in kwargs if k != "inplace"}:
        return _ACTIVATIONS[target]()
    if target is F.gelu and not args and set(kwargs) <= {"approximate"}:
        return nn.GELU(kwargs.get("approximate", "none"))
    if target is F.leaky_relu and len(args) <= 1 and set(kwargs) <= {"negative_slope", "inplace"}:
        return nn.LeakyReLU(args[0] if args else kwargs.get("negative_slope", 0.01))
    if target in (torch.flatten, "flatten") and all(isinstance(a, int) for a in (*args, *kwargs.values())):
        names = ("start_dim", "end_dim")
        dims = {**dict(zip(names, args)), **kwargs}
        return nn.Flatten(dims.get("start_dim", 0), dims.get("end_dim", -1))
    return None


def chain(model) -> list[Node]:
    """An nn.Sequential's layers (or a lone layer), in order, each reading the one before."""
    modules = list(_flat(model))
    index = {id(m): name for name, m in model.named_modules()}
    return _split_group_norms([Node("layer", (i - 1,), module=m, prefix=_prefix(index[id(m)]))
                               for i, m in enumerate(modules)])


def _split_group_norms(nodes) -> list[Node]:
    """Each GroupNorm as two calls: its standardisation, then its affine map per channel (which
    holds its parameters), every later index moved on to match."""
    out, where = [], {-1: -1}
    for i, node in enumerate(nodes):
        inputs = tuple(where[j] for j in node.inputs)
        args = tuple(Arg(where[a.index]) if isinstance(a, Arg) else a for a in node.args)
        if type(node.module) is nn.GroupNorm:
            norm = node.module
            out.append(Node("layer", inputs, module=Standardized(norm.num_groups, norm.eps)))
            inputs = (len(out) - 1,)
            node = Node("layer", inputs, module=PerChannel(norm), prefix=node.prefix)
        else:
            node = Node(node.kind, inputs, module=node.module, prefix=node.prefix, fn=node.fn, args=args)
        where[i] = len(out)
        out.append(node)
    return out


def traced(model) -> list[Node] | str:
    """The module's graph by torch.fx, its output the last node; or why it cannot be had."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many kinds: any failure means no graph
        return f"the model could not be traced by torch.fx ({type(exc).__name__}: {exc})"
    nodes, index, output = [], {}, None
    modules = dict(model.named_modules())
    for n in graph.nodes:
        if n.op == "placeholder":
            if index:
                return "a model with more than one input"
            index[n] = -1
            continue
        if n.op == "output":
            output = n.args[0]
            break
        if n.op == "get_attr":
            return f"a parameter or buffer read directly ({n.target})"
        node = _node(n, index, modules, nodes)
        if isinstance(node, str):
            return node
        index[n] = len(nodes)
        nodes.append(node)
    if not isinstance(output, torch.fx.Node) or index.get(output, -1) != len(nodes) - 1:
        return "a model whose output is not its last call's tensor"
    return _split_group_norms(nodes)


def _node(n, index, modules, nodes) -> Node | str:
    target = n.target
    name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    tensor = lambda a: isinstance(a, torch.fx.Node) and (index[a] < 0 or nodes[index[a]].kind != "value")
    if target in _CATS:
        return _cat(n, index, tensor)
    if target is operator.mul and len(n.args) == 2 and _number(n.args[0]) and tensor(n.args[1]):
        return Node("layer", (index[n.args[1]],), module=Scaled(float(n.args[0])))  # 2 * x
    if not n.args or not isinstance(n.args[0], torch.fx.Node):
        return f"a call of {name}"
    first, rest = index[n.args[0]], n.args[1:]
    is_tensor = first < 0 or nodes[first].kind != "value"
    if n.op == "call_module":
        if rest or n.kwargs or not is_tensor:
            return f"a call of {target} with other arguments than one tensor"
        return Node("layer", (first,), module=modules[target], prefix=_prefix(target))
    if target in (operator.add, torch.add) and len(rest) == 1 and isinstance(rest[0], torch.fx.Node) and not n.kwargs:
        if is_tensor and tensor(rest[0]):
            return Node("join", (first, index[rest[0]]), fn=Add)
        return f"a call of {name} on sizes"
    if is_tensor and not n.kwargs and (
            (target in _SCALES and len(rest) == 1 and _number(rest[0])) or (target in (operator.neg, "neg") and not rest)):
        factor = _SCALES[target](float(rest[0])) if rest else -1.0
        return Node("layer", (first,), module=Scaled(factor))
    values = _VALUES.get(target) or (_shape if target is getattr and rest == ("shape",) else None)
    if values is not None:
        if target is operator.getitem and is_tensor:
            return "an indexed tensor"
        if _computed(rest):
            return f"a call of {name} with a computed argument"
        return Node("value", (first,), fn=values, args=rest)
    if not is_tensor:
        return f"a call of {name} on sizes"
    if target in _SHAPES and not n.kwargs and _ints(rest) and (
            len(rest) == 1 and rest[0] != 0 if target != "contiguous" else not rest):
        return Node("layer", (first,), fn=_reshape(_SHAPES[target]), args=tuple(rest))
    if target in ("view", "reshape") and not n.kwargs:
        if len(rest) == 1 and isinstance(rest[0], (tuple, list)):  # x.view((B, -1)): the shape as one tuple
            rest = tuple(rest[0])
        if _computed(a for a in rest if not isinstance(a, torch.fx.Node)):
            return f"a {target} by a computed shape"
        args = tuple(Arg(index[a]) if isinstance(a, torch.fx.Node) else a for a in rest)
        return Node("layer", (first,), fn=_reshape(target), args=args)
    module = _function_module(target, rest, dict(n.kwargs))
    if module is None:
        return f"a call of {name}"
    if n.kwargs.get("inplace") and len(n.args[0].users) > 1:
        return f"an in-place {name} of a tensor read elsewhere"
    return Node("layer", (first,), module=module)


def _cat(n, index, tensor) -> Node | str:
    """torch.cat of tensors along one axis (not the samples')."""
    args = dict(zip(("tensors", "dim"), n.args))
    for key, value in n.kwargs.items():
        args["dim" if key == "axis" else key] = value
    tensors, dim = args.get("tensors"), args.get("dim", 0)
    if set(args) - {"tensors", "dim"} or not isinstance(tensors, (tuple, list)) or not isinstance(dim, int):
        return "a concatenation with other arguments than tensors and an axis"
    if not all(tensor(t) for t in tensors):
        return "a concatenation of other values than tensors"
    if dim == 0:
        return "a concatenation along the samples' axis"
    return Node("join", tuple(index[t] for t in tensors), fn=Cat, args=(dim,))


def _ints(values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _number(a) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def _computed(args) -> bool:
    """Whether a traced value hides in the arguments (at any depth)."""
    found = []
    torch.fx.node.map_arg(tuple(args), lambda a: found.append(a))
    return bool(found)


def _flat(model):
    if type(model) is nn.Sequential:
        for child in model:
            yield from _flat(child)  # iterating, not children(): a layer used twice appears twice
    else:
        yield model


def _prefix(name: str) -> str:
    return name + "." if name else ""

"""Hessian and Gauss-Newton products of a model, layer by layer, for b columns.

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

Beyond chains: a model is a graph of calls (``graph.py``: an ``nn.Sequential``, or any module
torch.fx can trace), in which a tensor may be read by several calls, two tensors may be summed
(a residual connection) and several concatenated. The sweeps then run in the graph's order: a
sum adds its inputs' tangents and hands R g back to both, a concatenation joins them and hands
each input its part; where calls read the same tensor, their gradients and R g add up at it.

Which calls: these module types (``layers.py``): Linear, Embedding (a first layer, without
padding_idx or max_norm), Conv1d/2d/3d (grouped and depthwise too; zero padding, 'same' where it
is even on both sides), Flatten, MaxPool1d/2d/3d, AvgPool1d/2d/3d and AdaptiveAvgPool1d/2d/3d
(as modules or functions), Upsample, padding by zeros, reflection, replication or wrapping,
PixelShuffle/PixelUnshuffle/ChannelShuffle, BatchNorm1d/2d/3d with running statistics and
Dropout (the operator runs in eval mode, where the one is an affine map per channel and the
other the identity), LayerNorm, GroupNorm, Identity, and the elementwise Tanh, Sigmoid, ReLU,
LeakyReLU, GELU (exact), SiLU (as modules or as functions); views, reshapes, flattens, squeezes,
permutes and transposes, means and sums over a sample's axes, products with a constant; sums of
two tensors of one shape, concatenations; none of them across the samples' axis. Under
``nn.CrossEntropyLoss`` (class-index targets, class weights and ignore_index allowed, no label
smoothing, mean or sum) or ``nn.MSELoss`` (mean or sum). ``plan`` says why anything else is not
covered, and the operator then uses autograd.
Subclasses of these modules are refused: their forward may differ.

Across passes: the forward and gradient sweeps of each batch are kept (up to ``KEEP_BYTES``) and
reused while the batch's data and the parameters are unchanged, see ``_Kept``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import graph
from .layers import LAYERS, NORMS, Elementwise, MaxPool, Unsupported, elementwise, layer_for, refusal


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
            raise Unsupported("CrossEntropyLoss other than [B, C] logits and class-index targets")
        keep = y != self.ignore_index
        if self.classes is not None:  # a weighted mean: over the kept targets' class weights
            return float(self.classes.to(y.device)[y[keep]].sum()) or 1.0
        return max(int(keep.sum()), 1)  # all ignored: PyTorch's mean is NaN

    def gradient(self, z, y, terms):
        """(g, state): the gradient at the outputs z, and what ``product`` needs of this block."""
        if self.kind == "mse":
            if y.shape != z.shape:
                raise Unsupported("MSELoss with targets of another shape than the outputs (broadcasting)")
            scale = 2.0 / terms
            return scale * (z - y), scale
        if z.ndim != 2 or y.ndim != 1 or y.dtype not in (torch.int64, torch.int32):
            raise Unsupported("CrossEntropyLoss other than [B, C] logits and class-index targets")
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

class Plan:
    """A model and loss the sweeps cover: the graph of its calls (``graph.Node``, in an order
    where every input comes first, the output last), with their parameters' names."""

    def __init__(self, nodes, loss: _Loss, names):
        self.nodes, self.loss = nodes, loss
        self.names = set(names)
        # how many calls read each node's tensor: a tangent read twice is copied for all but the
        # last reader (a layer may scale its input's tangent in place)
        self.readers = [0] * len(nodes)
        for node in nodes:
            if node.kind != "value":
                for j in node.inputs:
                    if j >= 0:
                        self.readers[j] += 1
        self._sized = None  # (input shape, dtype, device) -> every node's output size, see _sizes
        modules = [n.module for n in nodes if n.module is not None]
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
        moving = self._moving(tangents)
        # tangents exist only downstream of a selected parameter (the input's R h is zero)
        widest = max((size for size, m in zip(sizes, moving) if m), default=1)
        cols, rows = _blocks(b, x.shape[0], widest * next(iter(tangents.values())).element_size())
        cols = cols if chunk is None else max(1, min(cols, int(chunk)))
        out = into if into is not None else {k: torch.zeros_like(t) for k, t in tangents.items()}
        with torch.no_grad():
            setting = (rows, moving, scale)
            blocks = self.kept.find(batch, x, y, setting)
            if blocks is None:
                # the loss's divisor over the scale: every product is linear in the loss
                terms = self.loss.terms(y, sizes[-1]) / scale
                blocks = [self._forward(x[r:r + rows], y[r:r + rows], terms, moving)
                          for r in range(0, x.shape[0], rows)]
                self.kept.keep(batch, x, y, setting, blocks)
            for block in blocks:  # the forward and gradient sweeps of a block of rows serve all its columns
                for c in range(0, b, cols):
                    part = {k: t[c:c + cols] for k, t in tangents.items()}
                    acc = {k: t[c:c + cols] for k, t in out.items()}
                    self._sweep(block, part, moving, second, acc)
        return out

    def _sizes(self, x) -> list[int]:
        """Every node's output, in elements per sample (0 for a size), from one sample's forward
        pass (kept per input shape)."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if self._sized is None or self._sized[0] != key:
            with torch.no_grad():
                values = self._values(x[:1])
            sizes = [v[0].numel() if isinstance(v, torch.Tensor) else 0 for v in values[:-1]]
            self._sized = (key, sizes)
        return self._sized[1]

    def _values(self, x, layers=None) -> list:
        """The forward pass: every node's value, the input's last (index -1); through the
        layers' forward sweeps where ``layers`` (a list per node) is given to hold them."""
        values = [None] * len(self.nodes) + [x]
        for i, node in enumerate(self.nodes):
            h = values[node.inputs[0]]
            if node.kind == "join":
                join = node.fn(*node.args)
                values[i] = join.forward([values[j] for j in node.inputs])
                if layers is not None:
                    layers[i] = join
            elif node.kind == "value":
                values[i] = node.fn(h, *node.args)
            elif layers is None:
                values[i] = node.call(values)(h)
            else:
                module = node.call(values)
                layers[i] = layer_for(module)
                values[i] = layers[i].forward(module, h)
        return values

    def _moving(self, tangents) -> tuple:
        """Per node: whether a selected parameter lies at or before it. Then its output has a
        tangent, and its backward sweep has a parameter to reach."""
        moving = []
        for node in self.nodes:
            own = node.module is not None and bool(self._tangents(node, tangents))
            moving.append(node.kind != "value" and (own or any(moving[j] for j in node.inputs if j >= 0)))
        return tuple(moving)

    def _forward(self, x, y, terms, moving) -> _Block:
        """The forward sweep and the loss's gradient, carried back to every node's output that
        leads back to a moving parameter."""
        nodes = self.nodes
        layers = [None] * len(nodes)
        values = self._values(x, layers)
        grads = [None] * len(nodes)
        grads[-1], state = self.loss.gradient(values[-2], y, terms)
        for i in range(len(nodes) - 1, -1, -1):
            if grads[i] is None or not moving[i]:  # (a size never moves)
                continue
            # a join's gradients are views; a layer's is computed only where its input moves
            parts = layers[i].gradient(grads[i]) if nodes[i].kind == "join" else None
            for k, j in enumerate(nodes[i].inputs):
                if j >= 0 and moving[j]:
                    g = parts[k] if parts is not None else layers[i].gradient(grads[i])
                    grads[j] = g if grads[j] is None else grads[j] + g
        # only what the backward sweeps read stays (the block may be kept across passes)
        grads = [g if layer is not None and layer.reads_gradient else None for g, layer in zip(grads, layers)]
        for node, pool in zip(nodes, layers):
            act = layers[node.inputs[0]] if isinstance(pool, MaxPool) and node.inputs[0] >= 0 else None
            if isinstance(act, Elementwise) and act.d2 is None and self.readers[node.inputs[0]] == 1:
                pool.absorb(act)
        return _Block(layers, grads, state)

    def _sweep(self, block: _Block, tangents, moving, second, acc):
        """One block of columns' R-forward, loss and backward sweeps, its products added into ``acc``."""
        nodes, layers, grads = self.nodes, block.layers, block.grads
        rh, unread = [None] * len(nodes), list(self.readers)

        def read(j):  # node j's tangent, for one reader to own
            if j < 0 or rh[j] is None:
                return None
            unread[j] -= 1
            return rh[j] if unread[j] == 0 else rh[j].clone()

        for i, node in enumerate(nodes):
            if node.kind == "join":
                rh[i] = layers[i].tangent([read(j) for j in node.inputs])
            elif node.kind == "layer":
                v = self._tangents(node, tangents)
                r = layers[i].rh = read(node.inputs[0])
                rh[i] = layers[i].tangent(r, v) if (r is not None or v) else None
        if rh[-1] is not None:  # else no selected parameter moves the output: the product is zero
            rg = [None] * len(nodes)
            rg[-1] = self.loss.product(rh[-1], block.state)
            for i in range(len(nodes) - 1, -1, -1):
                node, out = nodes[i], rg[i]
                if out is None or not moving[i]:
                    continue
                rg[i] = None
                if node.kind == "join":  # each input's sweep owns its R g
                    ins = node.inputs
                    given = layers[i].backward(out, [j >= 0 and moving[j] for j in ins])
                else:
                    j = node.inputs[0]
                    need = j >= 0 and moving[j]
                    back = layers[i].backward(grads[i], out, self._tangents(node, tangents), second, need,
                                              self._tangents(node, acc))
                    ins, given = ([j], [back]) if need else ([], [])
                for j, t in zip(ins, given):
                    if t is not None:
                        rg[j] = t if rg[j] is None else rg[j] + t
        for layer in layers:  # the block may be kept: not these columns' tangents with it
            if layer is not None:
                layer.rh = None

    def _tangents(self, node, tangents) -> dict:
        if node.module is None:
            return {}
        return {key: tangents[node.prefix + key] for key, _ in node.module.named_parameters(recurse=False)
                if node.prefix + key in self.names}


class _Block:
    """A block of rows after the forward and gradient sweeps: the layers (with their inputs and
    local derivatives), the gradient at the output of every moving layer whose backward reads
    it, and the loss's state for its product."""

    def __init__(self, layers, grads, state):
        self.layers, self.grads, self.state = layers, grads, state

    def tensors(self):
        layers = [layer for layer in self.layers if layer is not None]  # none for a size
        for item in (*(t for layer in layers for t in vars(layer).values()), *self.grads, self.state):
            yield from (item if isinstance(item, tuple) else (item,))


KEEP_BYTES = 1 << 30


class _Kept:
    """The blocks of each batch of the last pass, kept for the next while they fit in KEEP_BYTES.

    An SLQ or Lanczos run makes tens of passes over the same data at the same parameters, and
    the forward and gradient sweeps do not depend on the columns: kept, an MLP's and a small
    CNN's 8-column passes ran 1.15-1.2x faster on a CPU. A batch's blocks are reused only where
    its inputs, its targets and every parameter (and BatchNorm's running statistics) equal
    copies kept beside them, compared element by element (not trusted to tensor versions: a
    change through ``.data`` or a NumPy view keeps those), and the blocking, which calls move
    and the loss's scale are unchanged; anything else is recomputed. A shuffling loader's
    batches simply never match. A model over half the budget keeps nothing (its copy alone would
    crowd the blocks out)."""

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


def plan(model, loss, names) -> Plan | str:
    """A ``Plan`` for the model and loss, or a line saying why the sweeps do not cover them."""
    covered = _loss_of(loss)
    if isinstance(covered, str):
        return covered
    simple = type(model) is nn.Sequential or type(model) in LAYERS or elementwise(model) is not None
    nodes = graph.chain(model) if simple else graph.traced(model)
    if isinstance(nodes, str):
        return nodes
    modules = [n.module for n in nodes if n.module is not None]
    if len({id(m) for m in modules}) < len(modules):
        return "a layer used twice"
    named = dict(model.named_parameters())
    for node in nodes:
        module = node.module
        if module is None:
            continue
        if elementwise(module) is None and type(module) not in LAYERS:
            return f"a {type(module).__name__} layer"
        reason = refusal(module)
        if reason is not None:
            return reason
        if not isinstance(module, NORMS) and any(True for _ in module.buffers(recurse=False)):
            return f"a {type(module).__name__} layer with buffers"
        for key, p in module.named_parameters(recurse=False):
            if named.get(node.prefix + key) is not p:
                return "parameters shared between layers"
    return Plan(nodes, covered, names)

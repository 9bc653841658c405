"""The GGN operator with a fused softmax cross-entropy head (infolens/curvature/head.py) against the
generic GGN product of the same operator with head=None, in float64: MLP and language-model-like
models, reductions, ignore_index, class weights, tied weights, parameter subsets, engines; when the
head is not fused; and, at a vocabulary of 8000, that no [b, tokens, V] tensor is formed."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from infolens import _backend
from infolens.curvature import CurvatureOperator

V = 13  # vocabulary
TOL = 1e-10


pytestmark = pytest.mark.usefixtures("float64_default")


class TinyLM(nn.Module):
    """Embedding, a mixing layer and a head over the vocabulary; logits returned with the classes
    on axis 1 ("transpose": [B, V, S] for targets [B, S]) or flattened ("flat": [B * S, V])."""

    def __init__(self, layout="transpose", tied=False, d=6):
        super().__init__()
        self.layout = layout
        self.embed = nn.Embedding(V, d)
        self.mix = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, V, bias=not tied)
        if tied:
            self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        logits = self.lm_head(torch.tanh(self.mix(self.embed(ids))))
        return logits.transpose(1, 2) if self.layout == "transpose" else logits.reshape(-1, V)


def mlp():
    return nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, V))


def problem(name, seed=0):
    """(model, data, body parameter names, head module name) with an uneven last batch of 3."""
    torch.manual_seed(seed)
    if name == "mlp":
        x, y = torch.randn(11, 4), torch.randint(0, V, (11,))
        return mlp(), (x, y), ["0.weight", "0.bias"], "2"
    ids, y = torch.randint(0, V, (11, 5)), torch.randint(0, V, (11, 5))
    model = TinyLM(layout="flat" if name == "lm-flat" else "transpose", tied=name == "lm-tied")
    body = ["embed.weight", "mix.weight", "mix.bias"]
    if name == "lm-flat":  # targets flattened with the logits: an iterable of batches
        return model, [(ids[i:i + 4], y[i:i + 4].reshape(-1)) for i in range(0, 11, 4)], body, "lm_head"
    return model, (ids, y), body, "lm_head"


def ignore_some(data, index):
    """Sets about a quarter of the targets to ``index``."""
    def mark(y):
        y = y.clone()
        y.view(-1)[::4] = index
        return y
    if isinstance(data, tuple):
        return data[0], mark(data[1])
    return [(x, mark(y)) for x, y in data]


LOSSES = {
    "mean": lambda: nn.CrossEntropyLoss(),
    "sum": lambda: nn.CrossEntropyLoss(reduction="sum"),
    "ignore": lambda: nn.CrossEntropyLoss(),  # ignore_index=-100, some targets ignored
    "weighted-ignore-3": lambda: nn.CrossEntropyLoss(weight=torch.rand(V) + 0.5, ignore_index=3),
    "functional": lambda: nn.functional.cross_entropy,
}


def fused_and_generic(model, loss, data, **kwargs):
    kwargs.setdefault("batch_size", 4)
    if not isinstance(data, tuple):
        kwargs.pop("batch_size")
    fused = CurvatureOperator(model, loss, data, **kwargs)
    generic = CurvatureOperator(model, loss, data, head=None, **kwargs)
    return fused, generic


def assert_same_product(fused, generic, b=5, seed=1):
    v = torch.randn(fused.n, b, generator=torch.Generator().manual_seed(seed))
    got, want = fused(v), generic(v)
    err = float((got - want).abs().max())
    assert err <= TOL * float(want.abs().max()), f"fused vs generic: {err:.3g} of {float(want.abs().max()):.3g}"


@pytest.mark.parametrize("name, loss_name", [("mlp", loss) for loss in LOSSES] + [
    ("lm-transpose", "ignore"), ("lm-transpose", "weighted-ignore-3"), ("lm-flat", "sum"), ("lm-tied", "mean")])
def test_fused_head_equals_the_generic_ggn(name, loss_name):
    model, data, _, head = problem(name)
    if loss_name.startswith(("ignore", "weighted")):
        data = ignore_some(data, 3 if "3" in loss_name else -100)
    fused, generic = fused_and_generic(model, LOSSES[loss_name](), data)
    assert fused.head is not None and fused.head.name == head, fused.head_note
    assert generic.head is None and "fused softmax cross-entropy head" in repr(fused)
    assert_same_product(fused, generic)


@pytest.mark.parametrize("subset", ["head", "head-weight", "body", "body-and-head-bias"])
@pytest.mark.parametrize("name", ["mlp", "lm-transpose", "lm-tied"])
def test_parameter_subsets(name, subset):
    model, data, body, head = problem(name, seed=2)
    module = model.get_submodule(head)
    params = {"head": module,
              "head-weight": [module.weight],  # a tensor; tied: the embedding's weight too
              "body": body,
              "body-and-head-bias": body[1:] + ([module.bias] if module.bias is not None else [])}[subset]
    fused, generic = fused_and_generic(model, nn.CrossEntropyLoss(), ignore_some(data, -100), params=params)
    assert fused.head is not None, fused.head_note
    assert_same_product(fused, generic, b=3)


class ReadsTheHeadWeight(TinyLM):
    """Embeds with the head's weight by a function call, not by holding it: only autograd sees that
    the head's weight reaches the head's input."""

    def forward(self, ids):
        h = torch.tanh(self.mix(nn.functional.embedding(ids, self.lm_head.weight)))
        return self.lm_head(h).transpose(1, 2)


def test_a_head_weight_used_before_the_head_is_found_by_autograd():
    _, data, _, _ = problem("lm-transpose", seed=10)
    model = ReadsTheHeadWeight()
    fused, generic = fused_and_generic(model, nn.CrossEntropyLoss(), data, params=model.lm_head)
    assert fused.head.body and fused.head.weight == "lm_head.weight"
    assert_same_product(fused, generic)


def test_fisher_is_the_fused_ggn_and_one_pass_per_block():
    model, (x, y), _, _ = problem("mlp", seed=3)
    calls = []

    class CountingLoader:
        def __iter__(self):
            calls.append(1)
            return iter([(x[:6], y[:6]), (x[6:], y[6:])])

    fisher = CurvatureOperator(model, nn.CrossEntropyLoss(), CountingLoader(), kind="fisher")
    ggn = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), batch_size=6, head=None)
    assert fisher.head is not None
    calls.clear()
    assert_same_product(fisher, ggn, b=7)
    assert len(calls) == 1


@pytest.mark.parametrize("backend", ["native", "reference"])
def test_each_engine(backend):
    if backend == "native" and not _backend.native_available():
        pytest.skip("native engine not built")
    model, data, _, _ = problem("lm-transpose", seed=4)
    fused, generic = fused_and_generic(model, nn.CrossEntropyLoss(), data, backend=backend)
    assert fused.head.engine == backend
    assert_same_product(fused, generic)


def test_head_named_explicitly_and_opt_out():
    model, data, _, _ = problem("lm-transpose", seed=5)
    loss = nn.CrossEntropyLoss()
    by_name = CurvatureOperator(model, loss, data, head="lm_head")
    by_module = CurvatureOperator(model, loss, data, head=model.lm_head)
    assert by_name.head.name == by_module.head.name == "lm_head"
    off = CurvatureOperator(model, loss, data, head=None)
    assert off.head is None and off.head_note == "not fused (head=None)"
    with pytest.raises(ValueError, match="cannot fuse it: the model's output is not the output of"):
        CurvatureOperator(model, loss, data, head="mix")  # not the module whose output is returned
    with pytest.raises(ValueError, match="cannot fuse it: 'embed' is not an nn.Linear"):
        CurvatureOperator(model, loss, data, head=model.embed)
    with pytest.raises(ValueError, match="cannot fuse it: kind='hessian'"):
        CurvatureOperator(model, loss, data, head="lm_head", kind="hessian")
    with pytest.raises(ValueError, match="no module named 'nope'"):
        CurvatureOperator(model, loss, data, head="nope")
    with pytest.raises(ValueError, match="no module like that"):
        CurvatureOperator(model, loss, data, head=nn.Linear(6, V))


class ScaledLogits(nn.Module):
    """The head's output changed after the head: in place, or by a second call of the head."""

    def __init__(self, how):
        super().__init__()
        self.how, self.body, self.head = how, nn.Linear(4, 7), nn.Linear(7, V)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        if self.how == "twice":
            return self.head(h + self.head(h)[:, :7])
        return self.head(h).mul_(2.0)


def not_fused(model=None, loss=None, data=None, **kwargs):
    model = mlp() if model is None else model
    torch.manual_seed(6)
    data = (torch.randn(9, 4), torch.randint(0, V, (9,))) if data is None else data
    op = CurvatureOperator(model, nn.CrossEntropyLoss() if loss is None else loss, data, **kwargs)
    assert op.head is None
    return op.head_note


def test_the_generic_path_where_the_pattern_does_not_match():
    assert "kind='hessian'" in not_fused(kind="hessian")
    assert "kind='empirical-fisher'" in not_fused(kind="empirical-fisher")
    assert "label smoothing" in not_fused(loss=nn.CrossEntropyLoss(label_smoothing=0.1))
    assert "not nn.CrossEntropyLoss" in not_fused(loss=lambda out, y: nn.functional.cross_entropy(out, y))
    assert "not the output of an nn.Linear head" in not_fused(mlp().append(nn.LogSoftmax(dim=1)))
    assert "not the output of an nn.Linear head" in not_fused(ScaledLogits("in place"))
    assert "not the output of an nn.Linear head" in not_fused(ScaledLogits("twice"))
    x = torch.randn(9, 4)
    assert "not class indices" in not_fused(data=(x, torch.softmax(torch.randn(9, V), 1)))
    # the generic path still gives the GGN for these: in-place scaling is a head of 2 W, 2 c
    model = ScaledLogits("in place")
    data = (x, torch.randint(0, V, (9,)))
    twice = nn.Sequential(model.body, nn.Tanh(), nn.Linear(7, V))
    with torch.no_grad():
        twice[2].weight.copy_(2 * model.head.weight)
        twice[2].bias.copy_(2 * model.head.bias)
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), data, params=model.body)
    fused = CurvatureOperator(twice, nn.CrossEntropyLoss(), data, params=twice[0])
    assert fused.head is not None
    assert_same_product(fused, op)


class LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an aten op returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.skipif(not _backend.native_available(), reason="native engine not built")
def test_large_vocabulary_product_without_a_tangent_per_logit():
    """T = 256 tokens, V = 8000, d = 64, b = 8: the fused product equals the generic one, and the
    largest tensor torch forms on its way is parameter-sized ([P, b], [b, V, d]), a quarter of the
    [b, T, V] logit tangents the generic path forms."""
    T, vocab, d, b = 256, 8000, 64, 8
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(16, d), nn.Tanh(), nn.Linear(d, vocab))
    x, y = torch.randn(T, 16), torch.randint(0, vocab, (T,))
    fused, generic = fused_and_generic(model, nn.CrossEntropyLoss(), (x, y), batch_size=T, backend="native")
    v = torch.randn(fused.n, b, generator=torch.Generator().manual_seed(8))
    with LargestTensor() as fused_mode:
        got = fused(v)
    with LargestTensor() as generic_mode:
        want = generic(v)
    assert float((got - want).abs().max()) <= TOL * float(want.abs().max())
    assert generic_mode.largest >= b * T * vocab
    assert fused_mode.largest <= max(fused.n * b, b * vocab * d) < b * T * vocab / 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype, tol", [(torch.float64, TOL), (torch.float32, 1e-4)])
def test_cuda_tensors_use_the_cuda_engine(dtype, tol):
    from infolens.curvature import head

    model, (ids, y), _, _ = problem("lm-tied", seed=9)
    model, data = model.to("cuda", dtype), (ids.cuda(), ignore_some((ids, y), -100)[1].cuda())
    fused, generic = fused_and_generic(model, nn.CrossEntropyLoss(), data)
    assert fused.head.engine == ("native" if _backend.cuda_native(head.PRIMITIVE) else "reference")
    v = torch.randn(fused.n, 5, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    got, want = fused(v), generic(v)
    assert float((got - want).abs().max()) <= tol * float(want.abs().max())

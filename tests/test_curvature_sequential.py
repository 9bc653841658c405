"""The layer-by-layer sweeps of nn.Sequential models (curvature/sequential.py) against dense
float64 Hessians and Gauss-Newton matrices, against autograd in float32, and the operator's
choice between them."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infolens import linalg
from infolens.curvature import CurvatureOperator, layers, sequential
from test_curvature import dense, dense_references


def _seeded(build, seed=0):
    torch.manual_seed(seed)
    return build()


def _with_statistics(model):
    """BatchNorm's running statistics and the norms' affine parameters away from their defaults
    (mean 0, variance 1, gamma 1, beta 0 would hide a missing term)."""
    g = torch.Generator().manual_seed(11)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))
    return model


class Residual(nn.Module):
    """A small ResNet, traced by torch.fx: residual sums (one through a strided projection),
    batch norm, activations as functions and as tensor methods, a view by the batch's size."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.block1 = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                    nn.Conv2d(3, 3, 3, padding=1))
        self.project = nn.Conv2d(3, 4, 1, stride=2)
        self.block2 = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1))
        self.pool, self.head = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 4)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = torch.tanh(h + self.block1(h))
        h = (self.project(h) + self.block2(h)).sigmoid()
        h = self.pool(h)
        return self.head(h.view(h.size(0), -1))


class SkipMLP(nn.Module):
    """Skip connections over an MLP: each hidden state read by two calls."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.norm, self.out = nn.Linear(36, 6), nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 4)

    def forward(self, x):
        h = F.gelu(self.a(torch.flatten(x, 1)))
        h = h + F.silu(self.b(h))
        h = h + self.norm(h)
        return self.out(h)


class TwoPools(nn.Module):
    """A ReLU read by a max-pool and by an average pool (the max-pool must not take it over)."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()
        self.max, self.mean, self.head = nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Linear(18, 4)

    def forward(self, x):
        a = self.act(self.conv(x))
        return self.head(torch.flatten(self.max(a) + self.mean(a), 1))


class Dense(nn.Module):
    """Concatenations (one with the model's input, which no parameter moves, one along a
    negative axis), products with constants and a view by a shape tuple, traced by torch.fx."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.a, self.b, self.head = nn.Linear(45, 5), nn.Linear(45, 3), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.cat([x, torch.tanh(self.conv1(x))], 1)
        h = self.pool(torch.cat((h, 0.5 * torch.sigmoid(self.conv2(h))), dim=1))
        h = h.view((h.size(0), -1))
        h = torch.cat([torch.tanh(self.a(h)) / 4, -self.b(h)], dim=-1)
        return self.head(h.mul(3))


class Modern(nn.Module):
    """ConvNeXt's moves, traced: a depthwise convolution, LayerNorm and a Linear over channels
    last (permuted there and back), pooling functions, means and sums over axes, squeeze and
    unsqueeze."""

    def __init__(self):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.norm, self.pw, self.head = nn.LayerNorm(4), nn.Linear(4, 6), nn.Linear(16, 4)

    def forward(self, x):
        h = F.max_pool2d(torch.tanh(self.stem(x)), 2, stride=1)
        h = F.gelu(self.pw(self.norm(self.dw(h).permute(0, 2, 3, 1))))
        h = h.transpose(1, 3).contiguous()
        a = h.mean((2, 3))
        b = F.adaptive_avg_pool2d(h, 1).squeeze(-1).squeeze(-1)
        c = torch.sum(F.avg_pool2d(h, 2), dim=1, keepdim=True).squeeze(1).unsqueeze(-1).flatten(1)
        return self.head(torch.cat([a, b * 0.5, c], dim=1))


class Bag(nn.Module):
    """A bag of embeddings, traced: token indices in, their mean embedding through an MLP."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc, self.head = nn.Embedding(12, 5), nn.Linear(5, 6), nn.Linear(6, 4)

    def forward(self, tokens):
        return self.head(torch.tanh(self.fc(self.embed(tokens).mean(1))))


# (name, model builder, inputs [N, ...], targets, loss): every layer type and both losses
def _cases():
    g = torch.Generator().manual_seed(5)
    image = torch.randn(10, 1, 6, 6, generator=g)
    labels = torch.randint(0, 4, (10,), generator=g)
    ignored = labels.clone()
    ignored[[1, 6]] = 3  # ignore_index below: those samples drop out of the mean
    seq = torch.randn(10, 5, 6, generator=g)
    tokens = torch.randint(0, 12, (10, 7), generator=g)  # repeated within and across samples
    return [
        ("tanh-sigmoid MLP, mean CE",
         lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 7), nn.Tanh(), nn.Linear(7, 5), nn.Sigmoid(),
                               nn.Linear(5, 4)), image, labels, nn.CrossEntropyLoss()),
        ("nested, GELU SiLU LeakyReLU Dropout, summed CE",
         lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 6), nn.GELU(),
                               nn.Sequential(nn.Linear(6, 5), nn.SiLU(), nn.Dropout(0.5)), nn.Linear(5, 4),
                               nn.LeakyReLU(0.1), nn.Identity()), image, labels, nn.CrossEntropyLoss(reduction="sum")),
        ("CNN: padding, overlapping max-pool, stride, dilation; ignore_index",
         lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=1),
                               nn.Conv2d(3, 2, 2, stride=2, dilation=1), nn.Tanh(), nn.Flatten(), nn.Linear(8, 4)),
         image, ignored, nn.CrossEntropyLoss(ignore_index=3)),
        ("class weights and ignore_index, mean CE",
         lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 5), nn.Tanh(), nn.Linear(5, 4)), image, ignored,
         nn.CrossEntropyLoss(weight=torch.tensor([0.5, 2.0, 1.0, 3.0]), ignore_index=3)),
        ("Conv1d + max-pool, mean CE",
         lambda: nn.Sequential(nn.Conv1d(5, 3, 3, dilation=2), nn.Sigmoid(), nn.MaxPool1d(2), nn.Flatten(),
                               nn.Linear(3, 4)), seq, labels, nn.CrossEntropyLoss()),
        ("grouped and depthwise convolutions, padding='same'; mean CE",
         lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding="same"), nn.Tanh(), nn.Conv2d(4, 6, 3, groups=2, stride=2),
                               nn.Sigmoid(), nn.Conv2d(6, 6, 2, groups=6, padding=1, bias=False), nn.ReLU(),
                               nn.Flatten(), nn.Linear(54, 4)), image, labels, nn.CrossEntropyLoss()),
        ("grouped Conv1d with a channel multiplier and dilation; summed squared error",
         lambda: nn.Sequential(nn.Conv1d(5, 10, 2, groups=5, dilation=2, padding="valid"), nn.Tanh(),
                               nn.Conv1d(10, 4, 1, groups=2), nn.Flatten(), nn.Linear(16, 2)), seq,
         torch.randn(10, 2, generator=g), nn.MSELoss(reduction="sum")),
        ("upsampling, padding (reflected, replicated, zeros) and pixel shuffles; mean CE",
         lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
                               nn.Upsample(scale_factor=2, mode="bilinear"), nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3),
                               nn.PixelUnshuffle(2), nn.Sigmoid(), nn.ZeroPad2d((1, 0, 0, 1)),
                               nn.Conv2d(16, 4, 2, stride=2), nn.Upsample(scale_factor=2, mode="nearest"),
                               nn.PixelShuffle(2), nn.ReplicationPad2d(1), nn.Flatten(), nn.Linear(100, 4)),
         image, labels, nn.CrossEntropyLoss()),
        ("GroupNorm (one with affine parameters, one without, one a LayerNorm over channels); mean CE",
         lambda: _with_statistics(nn.Sequential(
             nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SiLU(), nn.Conv2d(4, 6, 3, stride=2),
             nn.GroupNorm(3, 6, affine=False), nn.Tanh(), nn.Conv2d(6, 4, 2), nn.GroupNorm(1, 4), nn.Flatten(),
             nn.Linear(4, 4))), image, labels, nn.CrossEntropyLoss()),
        ("Conv3d, mean CE",
         lambda: nn.Sequential(nn.Conv3d(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 2 * 5 * 5, 4)),
         image[:, :, None].expand(10, 1, 3, 6, 6).contiguous(), labels, nn.CrossEntropyLoss()),
        ("Linear over a sequence axis, mean squared error",
         lambda: nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)), seq,
         torch.randn(10, 5, 2, generator=g), nn.MSELoss()),
        ("BatchNorm2d, average pools, BatchNorm1d without affine, mean CE",
         lambda: _with_statistics(nn.Sequential(
             nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2, ceil_mode=True),
             nn.Conv2d(3, 4, 2, padding=1), nn.BatchNorm2d(4), nn.SiLU(), nn.AdaptiveAvgPool2d((2, 1)),
             nn.Flatten(), nn.BatchNorm1d(8, affine=False), nn.Linear(8, 4))), image, labels, nn.CrossEntropyLoss()),
        ("BatchNorm first, Conv1d, AvgPool1d, adaptive pools over a sequence; summed squared error",
         lambda: _with_statistics(nn.Sequential(
             nn.BatchNorm1d(5), nn.Conv1d(5, 3, 2), nn.Sigmoid(), nn.AvgPool1d(2, stride=1, padding=1),
             nn.AdaptiveAvgPool1d(3), nn.Flatten(), nn.Linear(9, 2))), seq,
         torch.randn(10, 2, generator=g), nn.MSELoss(reduction="sum")),
        ("LayerNorm over one axis and over two (no bias), a sequence; mean squared error",
         lambda: _with_statistics(nn.Sequential(
             nn.Linear(6, 4), nn.LayerNorm(4), nn.Tanh(), nn.LayerNorm((5, 4), bias=False), nn.Linear(4, 2))),
         seq, torch.randn(10, 5, 2, generator=g), nn.MSELoss()),
        ("LayerNorm first, without affine parameters, then one with them; mean CE",
         lambda: _with_statistics(nn.Sequential(
             nn.Flatten(), nn.LayerNorm(36, elementwise_affine=False), nn.Linear(36, 5), nn.GELU(), nn.LayerNorm(5),
             nn.Linear(5, 4))), image, labels, nn.CrossEntropyLoss()),
        ("summed squared error",
         lambda: nn.Sequential(nn.Flatten(), nn.Linear(30, 3), nn.Sigmoid(), nn.Linear(3, 2)), seq,
         torch.randn(10, 2, generator=g), nn.MSELoss(reduction="sum")),
        ("residual CNN, traced; mean CE", lambda: _with_statistics(Residual()), image, labels, nn.CrossEntropyLoss()),
        ("MLP with skips and LayerNorm, traced; summed CE", SkipMLP, image, labels,
         nn.CrossEntropyLoss(reduction="sum")),
        ("a ReLU read by two pools, traced; mean CE", TwoPools, image, labels, nn.CrossEntropyLoss()),
        ("concatenations, constants, a view by a shape tuple, traced; mean CE", Dense, image, labels,
         nn.CrossEntropyLoss()),
        ("embeddings of tokens, flattened; mean CE",
         lambda: nn.Sequential(nn.Embedding(12, 3), nn.Flatten(), nn.Linear(21, 5), nn.Sigmoid(), nn.Linear(5, 4)),
         tokens, labels, nn.CrossEntropyLoss()),
        ("a bag of embeddings, traced; mean squared error", Bag, tokens, torch.randn(10, 4, generator=g), nn.MSELoss()),
        ("permutes, pooling functions, means and sums, traced; summed CE", lambda: _with_statistics(Modern()), image,
         labels, nn.CrossEntropyLoss(reduction="sum")),
    ]


CASES = _cases()


def _case(start):
    return next(case for case in CASES if case[0].startswith(start))


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_sweeps_equal_the_dense_float64_hessian_and_ggn_with_uneven_batches(case):
    _, build, x, y, loss = case
    model, loss = _seeded(build).double().eval(), copy.deepcopy(loss).double()  # class weights too
    x = x.double() if x.is_floating_point() else x
    y = y.double() if y.is_floating_point() else y
    h, ggn, _ = dense_references(model, x, y, loss)
    for kind, truth in (("hessian", h), ("ggn", ggn)):
        for batch_size in (None, 4):  # 4 + 4 + 2: batches weighted by their share of the loss
            op = CurvatureOperator(model, loss, (x, y), kind=kind, mode="sequential", batch_size=batch_size,
                                   head=None)
            assert torch.allclose(dense(op), truth, atol=1e-12 * max(1.0, float(truth.abs().max())))
    # the test is not vacuous: the Hessian's second-order terms are present
    assert float((h - ggn).abs().max()) > 1e-6


@pytest.mark.usefixtures("float64_default")
def test_a_parameter_subset_is_the_dense_hessians_sub_block_and_chunks_change_nothing():
    _, build, x, y, loss = _case("CNN")
    model = _seeded(build).double().eval()
    x = x.double() if x.is_floating_point() else x
    h, _, _ = dense_references(model, x, y, loss)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    offsets = dict(zip(names, torch.tensor([0] + sizes).cumsum(0).tolist()))
    chosen = ["3.weight", "3.bias", "6.bias"]   # the middle convolution and the head's bias
    rows = torch.cat([torch.arange(offsets[n], offsets[n] + dict(model.named_parameters())[n].numel())
                      for n in chosen])
    op = CurvatureOperator(model, loss, (x, y), kind="hessian", params=chosen, mode="sequential")
    assert torch.allclose(dense(op), h[rows][:, rows], atol=1e-12)
    v = torch.randn(op.n, 5)
    chunked = CurvatureOperator(model, loss, (x, y), kind="hessian", params=chosen, mode="sequential", chunk=2)
    assert torch.allclose(chunked(v), op(v), atol=1e-13)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_float32_sweeps_agree_with_autograd_on_fresh_inputs(case, kind):
    _, build, x, y, loss = case
    for seed, rows in ((0, 10), (1, 7)):
        model = _seeded(build, seed).eval()
        data = (x[:rows], y[:rows])
        # column by column: GroupNorm's double backward has no batching rule
        autograd = CurvatureOperator(model, loss, data, kind=kind, head=None, chunk=1,
                                     mode="reverse-over-reverse" if kind == "hessian" else "generic")
        sweeps = CurvatureOperator(model, loss, data, kind=kind, head=None, mode="sequential")
        v = torch.randn(sweeps.n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        a, b = autograd(v), sweeps(v)
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_auto_times_the_sweeps_against_autograd_and_refuses_them_if_they_disagree(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    v = torch.randn(sum(p.numel() for p in model.parameters()), 4, dtype=torch.float64)
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian")
    truth = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian", mode="reverse-over-reverse")(v)
    assert torch.allclose(op(v), truth, atol=1e-5 * float(truth.abs().max()))
    assert op.mode in ("forward-over-reverse", "reverse-over-reverse", "sequential")
    assert op.mode_note.startswith("fastest on the first batch")

    # sweeps that are wrong (here: 1% too large) lose the contest whatever their speed
    honest = sequential.Plan.product

    def wrong(self, *args, **kwargs):
        return {k: 1.01 * t for k, t in honest(self, *args, **kwargs).items()}

    monkeypatch.setattr(sequential.Plan, "product", wrong)
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian")
    assert torch.allclose(op(v), truth, atol=1e-5 * float(truth.abs().max()))
    assert op.mode != "sequential" and "sequential: differs from autograd" in op.mode_note
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="ggn", head=None)
    op(v)
    assert op.mode == "generic" and "differs" in op.mode_note


class Custom(nn.Linear):
    pass


class Direct(nn.Module):
    """Reads its parameter itself: no layer the sweeps know."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 3))

    def forward(self, x):
        return x @ self.w.T


class InPlaceShared(nn.Module):
    """An in-place ReLU of a tensor read again after it: the traced graph would not say so."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        a = self.fc(x)
        return a + F.relu(a, inplace=True)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, scale=None):
        return self.fc(x)


class Broadcast(nn.Module):
    """A sum that broadcasts [B, 2] against [B, 1]: known only once shapes are seen."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


class Squared(nn.Module):
    """A product of two tensors."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = self.fc(x)
        return h * h


class Stacked(nn.Module):
    """A concatenation along the samples' axis."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(torch.cat([x, x]))


@pytest.mark.parametrize("model, loss, reason", [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2)),
     nn.CrossEntropyLoss(), "BatchNorm1d layer without running statistics"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.RMSNorm(4), nn.Linear(4, 2)), nn.CrossEntropyLoss(), "RMSNorm"),
    (lambda: nn.Sequential(Custom(3, 2)), nn.CrossEntropyLoss(), "Custom"),
    (Direct, nn.CrossEntropyLoss(), "a parameter or buffer read directly (w)"),
    (Squared, nn.CrossEntropyLoss(), "a call of mul"),
    (InPlaceShared, nn.CrossEntropyLoss(), "an in-place relu of a tensor read elsewhere"),
    (TwoInputs, nn.CrossEntropyLoss(), "more than one input"),
    (lambda: nn.Sequential(nn.Linear(3, 2)), nn.CrossEntropyLoss(label_smoothing=0.1), "label smoothing"),
    (lambda: nn.Sequential(nn.Linear(3, 2)), nn.BCEWithLogitsLoss(), "BCEWithLogitsLoss"),
    (lambda: nn.Sequential(nn.Linear(3, 2)), nn.MSELoss(reduction="none"), "reduction='none'"),
    (lambda: (lambda a: nn.Sequential(a, nn.Tanh(), a))(nn.Linear(3, 3)), nn.MSELoss(), "used twice"),
])
def test_models_the_sweeps_do_not_cover_are_named_and_left_to_autograd(model, loss, reason):
    model = model()
    names = [n for n, _ in model.named_parameters()]
    why = sequential.plan(model, loss, names)
    assert isinstance(why, str) and reason in why
    x = torch.randn(6, 3)
    y = torch.randint(0, 2, (6,)) if isinstance(loss, nn.CrossEntropyLoss) else torch.randn(6, 2 if "used" not in reason else 3)
    with pytest.raises(ValueError, match="mode 'sequential' does not cover this model"):
        CurvatureOperator(model, loss, (x, y), kind="hessian", mode="sequential")
    if loss.reduction != "none":  # auto: autograd, as before (an unreduced loss has no Hessian)
        op = CurvatureOperator(model, loss, (x, y), kind="hessian")
        op(torch.randn(op.n, 2, dtype=torch.float64))
        assert op.mode != "sequential"


@pytest.mark.parametrize("layer, x, reason", [
    (nn.Embedding(5, 3, padding_idx=0), torch.randint(0, 5, (6, 2)), "Embedding with padding_idx"),
    (nn.Embedding(5, 3, max_norm=1.0), torch.randint(0, 5, (6, 2)), "max_norm"),
    (nn.Conv1d(3, 2, 2, padding="same"), torch.randn(6, 3, 2), "padded unevenly"),
    (nn.Conv1d(3, 2, 1, padding=1, padding_mode="circular"), torch.randn(6, 3, 2), "non-zero padding modes"),
    (nn.MaxPool1d(1, return_indices=True), torch.randn(6, 3, 2), "return_indices"),
    (nn.ConstantPad1d(1, 2.0), torch.randn(6, 3, 2), "a value other than 0"),
])
def test_layer_settings_the_sweeps_do_not_cover_are_named(layer, x, reason):
    model = nn.Sequential(layer, nn.Flatten(1))
    names = [n for n, _ in model.named_parameters()]
    assert reason in sequential.plan(model, nn.MSELoss(), names)
    with pytest.raises(layers.Unsupported, match=reason):  # checked again where the sweeps run
        layers.layer_for(layer).forward(layer, x)


def test_concatenations_along_the_samples_axis_are_refused():
    names = [n for n, _ in Stacked().named_parameters()]
    assert sequential.plan(Stacked(), nn.MSELoss(), names) == "a concatenation along the samples' axis"
    with pytest.raises(layers.Unsupported, match="samples' axis"):  # an axis counted from the end
        layers.Cat(-2).forward([torch.ones(3, 2), torch.ones(3, 2)])


def test_targets_the_sweeps_do_not_cover_fall_back_at_run_time():
    # class probabilities as targets: the plan exists, the first batch shows it does not apply
    model = nn.Sequential(nn.Linear(3, 4)).eval()
    x, y = torch.randn(6, 3), torch.softmax(torch.randn(6, 4), dim=1)
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian")
    out = op(torch.randn(op.n, 2, dtype=torch.float64))
    assert op.mode != "sequential" and "class-index targets" in op.mode_note
    assert torch.isfinite(out).all()
    forced = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian", mode="sequential")
    with pytest.raises(NotImplementedError, match="class-index targets"):
        forced(torch.randn(op.n, 2, dtype=torch.float64))


def test_any_failure_of_the_sweeps_leaves_auto_to_autograd(monkeypatch):
    def broken(self, *args, **kwargs):
        raise TypeError("an unforeseen graph")

    monkeypatch.setattr(sequential.Plan, "product", broken)
    model = SkipMLP().eval()
    x, y = torch.randn(6, 1, 6, 6), torch.randint(0, 4, (6,))
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian")
    v = torch.randn(op.n, 2, dtype=torch.float64)
    truth = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian", mode="reverse-over-reverse")(v)
    assert torch.allclose(op(v), truth, atol=1e-6 * float(truth.abs().max()))
    assert op.mode != "sequential" and "sequential: an unforeseen graph" in op.mode_note


def test_a_broadcasting_sum_falls_back_at_run_time():
    model = Broadcast().eval()
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    assert isinstance(sequential.plan(model, nn.CrossEntropyLoss(), ["a.weight"]), sequential.Plan)
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian")
    v = torch.randn(op.n, 2, dtype=torch.float64)
    truth = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian", mode="reverse-over-reverse")(v)
    assert torch.allclose(op(v), truth, atol=1e-6 * float(truth.abs().max()))
    assert op.mode != "sequential" and "broadcasting" in op.mode_note


@pytest.mark.parametrize("kind, mode", [("hessian", "generic"), ("ggn", "forward-over-reverse"),
                                        ("empirical-fisher", "sequential")])
def test_modes_that_do_not_compute_the_kind_are_refused(kind, mode):
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=f"mode '{mode}' is not a way to compute the {kind} product"):
        CurvatureOperator(model, nn.CrossEntropyLoss(), (torch.randn(4, 3), torch.randint(0, 2, (4,))),
                          kind=kind, mode=mode)


def test_a_float32_operator_keeps_its_lanczos_basis_in_float32_with_the_moments_intact():
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(400, 400, dtype=torch.float64, generator=g))
    values = torch.cat([torch.tensor([50.0, 20.0, 20.0], dtype=torch.float64),
                        torch.rand(397, dtype=torch.float64, generator=g)])
    a = (q * values) @ q.T
    a32 = a.float()
    op = linalg.Operator(lambda v: a32 @ v.float(), 400, dtype=torch.float32)
    z = torch.randn(400, 3, dtype=torch.float64, generator=g)
    quad = linalg.spectral_quadrature(op, probes=z, steps=40)
    for j in range(1, 6):  # z^T A^j z from the rule, to float32's accuracy
        exact = (z * (torch.linalg.matrix_power(a, j) @ z)).sum(dim=0)
        rule = (quad.weights * quad.nodes ** j).sum(dim=1)
        assert torch.allclose(rule, exact, rtol=2e-5)
    # the outliers' spectral weights, (q_i^T z)^2 summed over each eigenspace (float32 rounding
    # splits the repeated 20 into two eigenvalues 1e-6 apart, which the rule may resolve)
    for value, columns in ((50.0, [0]), (20.0, [1, 2])):
        truth = (q[:, columns].T @ z).square().sum(dim=0)
        near = (quad.nodes - value).abs() < 1e-3
        assert torch.allclose(torch.where(near, quad.weights, 0.0).sum(dim=1), truth, rtol=1e-4)


@pytest.mark.usefixtures("float64_default")
def test_in_place_activations_and_bias_only_subsets_are_handled():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(32, 5),
                          nn.LeakyReLU(0.2, inplace=True), nn.Linear(5, 3)).double().eval()
    x, y = torch.randn(7, 1, 6, 6), torch.randint(0, 3, (7,))
    loss = nn.CrossEntropyLoss()
    h, _, _ = dense_references(model, x, y, loss)
    assert torch.allclose(dense(CurvatureOperator(model, loss, (x, y), kind="hessian", mode="sequential")), h,
                          atol=1e-12)
    names = [n for n, _ in model.named_parameters()]
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    starts = dict(zip(names, torch.tensor([0] + list(sizes.values())).cumsum(0).tolist()))
    for chosen in (["0.bias"], ["3.bias", "5.weight"]):
        rows = torch.cat([torch.arange(starts[n], starts[n] + sizes[n]) for n in chosen])
        op = CurvatureOperator(model, loss, (x, y), kind="hessian", params=chosen, mode="sequential")
        assert torch.allclose(dense(op), h[rows][:, rows], atol=1e-12)


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize("case", [_case("tanh-sigmoid"), _case("CNN"), _case("Linear over a sequence")], ids=["MLP", "CNN", "sequence MSE"])
def test_blocks_of_rows_and_columns_change_nothing(case, monkeypatch):
    _, build, x, y, loss = case
    model = _seeded(build).double().eval()
    x = x.double() if x.is_floating_point() else x
    y = y.double() if y.is_floating_point() else y
    v = torch.randn(sum(p.numel() for p in model.parameters()), 5)
    whole = CurvatureOperator(model, loss, (x, y), kind="hessian", mode="sequential")(v)
    # tiny blocks: 1 to 3 rows, 1 or 2 columns per sweep
    monkeypatch.setattr(sequential, "BLOCK_BYTES", 4 * x[0].numel() * 8)
    monkeypatch.setattr(sequential, "MIN_ROWS", 3)
    assert sequential._blocks(5, 10, x[0].numel() * 8)[0] < 5
    blocked = CurvatureOperator(model, loss, (x, y), kind="hessian", mode="sequential")(v)
    assert torch.allclose(blocked, whole, atol=1e-13 * float(whole.abs().max()))


def test_block_sizes_keep_the_widest_tangent_near_the_budget():
    mb = 1 << 20
    assert sequential._blocks(8, 256, 512) == (8, 256)                  # an MLP: whole
    assert sequential._blocks(8, 128, 64 * 1024) == (2, 32)             # a small CNN's first layer
    assert sequential._blocks(8, 1024, 4096) == (8, 128)                # fewer rows first
    assert sequential._blocks(8, 16, 64 * mb) == (1, 16)                # never fewer than MIN_ROWS


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize("mode", ["sequential", "reverse-over-reverse"])
def test_a_batch_whose_targets_are_all_ignored_adds_nothing(mode):
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval()
    x, y = torch.randn(9, 3), torch.randint(0, 2, (9,))
    y[3:6] = 2                                  # the second batch of 3: every target ignored
    loss = nn.CrossEntropyLoss(ignore_index=2)
    h, _, _ = dense_references(model, x, y, loss)
    op = CurvatureOperator(model, loss, (x, y), kind="hessian", mode=mode, batch_size=3)
    assert torch.allclose(dense(op), h, atol=1e-12)
    with pytest.raises(ValueError, match="every target is ignored"):
        CurvatureOperator(model, loss, (x, torch.full_like(y, 2)), kind="hessian")


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize("case", [_case("tanh-sigmoid"), _case("CNN"), _case("Linear over a sequence")], ids=["MLP", "CNN", "sequence MSE"])
def test_kept_sweeps_give_fresh_products_and_follow_every_change(case, monkeypatch):
    _, build, x, y, loss = case
    model = _seeded(build).double().eval()
    x = x.double().clone()
    y = y.double().clone() if y.is_floating_point() else y.clone()
    v = torch.randn(sum(p.numel() for p in model.parameters()), 3)

    def fresh():  # a new operator keeps nothing yet
        return CurvatureOperator(model, loss, (x, y), kind="hessian", mode="sequential", batch_size=4)(v)

    op = CurvatureOperator(model, loss, (x, y), kind="hessian", mode="sequential", batch_size=4)
    before = op(v)
    assert len(op.plan.kept.entries) == 3          # batches of 4 + 4 + 2
    assert torch.equal(op(v), before)              # from the kept sweeps: the very same numbers
    # a parameter changed through .data, which leaves its version counter alone
    weight = next(model.parameters())
    version = weight._version
    weight.data.mul_(1.5)
    assert weight._version == version
    after = op(v)
    assert not torch.allclose(after, before) and torch.equal(after, fresh())
    # the data changed in place, through a NumPy view
    x.numpy()[:] *= -2.0
    moved = op(v)
    assert not torch.allclose(moved, after) and torch.equal(moved, fresh())
    # a loader that makes new tensors, in another order, every pass: products equal to rounding
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=True)
    shuffled = CurvatureOperator(model, loss, loader, kind="hessian", mode="sequential")
    for _ in range(2):
        assert torch.allclose(shuffled(v), moved, atol=1e-12 * float(moved.abs().max()))
    # nothing fits: nothing is kept, the products are the same
    monkeypatch.setattr(sequential, "KEEP_BYTES", 1000)
    small = CurvatureOperator(model, loss, (x, y), kind="hessian", mode="sequential", batch_size=4)
    assert torch.equal(small(v), moved) and not small.plan.kept.entries


@pytest.mark.usefixtures("float64_default")
def test_kept_sweeps_follow_batchnorms_running_statistics():
    # recalibrating the statistics (a forward pass in train mode) changes no parameter
    _, build, x, y, loss = _case("BatchNorm2d")
    model = _seeded(build).double().eval()
    x = x.double() if x.is_floating_point() else x
    v = torch.randn(sum(p.numel() for p in model.parameters()), 3)
    op = CurvatureOperator(model, loss, (x, y), kind="hessian", mode="sequential", batch_size=4)
    before = op(v)
    params = [p.clone() for p in model.parameters()]
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    after = op(v)
    fresh = CurvatureOperator(model, loss, (x, y), kind="hessian", mode="sequential", batch_size=4)(v)
    assert not torch.allclose(after, before) and torch.equal(after, fresh)


def test_a_model_over_half_the_keeping_budget_keeps_nothing(monkeypatch):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    v = torch.randn(sum(p.numel() for p in model.parameters()), 2)
    want = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian", mode="sequential")(v)
    monkeypatch.setattr(sequential, "KEEP_BYTES", 2 * 4 * sum(p.numel() for p in model.parameters()) - 8)
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian", mode="sequential")
    assert torch.equal(op(v), want) and torch.equal(op(v), want)
    assert not op.plan.kept.entries and op.plan.kept.theta is None

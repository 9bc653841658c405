"""Per-layer diagnostics: weight spectra against hand-built SVDs, and train-vs-test representation
divergence against the closed-form Gaussian KL."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from infolens.layers import WeightSpectrum, representation_divergence, spectrum_of, weight_spectra


def orthonormal(rows, cols, rng):
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def built(s, out, fan_in, seed=0):
    """W = U diag(s) V^T with random orthonormal U [out, r], V [fan_in, r], r = len(s)."""
    rng = np.random.default_rng(seed)
    s = np.asarray(s, dtype=np.float64)
    return torch.from_numpy(orthonormal(out, len(s), rng) * s @ orthonormal(fan_in, len(s), rng).T)


@pytest.mark.parametrize("out,fan_in", [(7, 5), (5, 7), (5, 5)])
def test_spectrum_matches_built_svd(out, fan_in):
    s = np.array([5.0, 3.0, 2.0, 0.5, 0.1])
    spec = spectrum_of(built(s, out, fan_in))
    p = s / s.sum()
    assert isinstance(spec, WeightSpectrum)
    assert spec.singular_values.dtype == np.float64
    np.testing.assert_allclose(spec.singular_values, s, rtol=0, atol=1e-10)
    assert spec.condition_number == pytest.approx(50.0, abs=1e-10)
    assert spec.log_volume == pytest.approx(np.log(s).sum(), abs=1e-10)
    assert spec.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), abs=1e-10)
    assert spec.stable_rank == pytest.approx((s**2).sum() / 25.0, abs=1e-10)
    assert spec.rank == 5 and spec.shape == (out, fan_in) and spec.weight_shape == (out, fan_in)
    assert not spec.singular_values.flags.writeable


def test_effective_rank_limits():
    # Equal singular values: entropy log r, effective rank r; stable rank r too.
    spec = spectrum_of(built([2.0] * 4, 6, 4))
    assert spec.effective_rank == pytest.approx(4.0, abs=1e-10)
    assert spec.stable_rank == pytest.approx(4.0, abs=1e-10)
    assert spec.condition_number == pytest.approx(1.0, abs=1e-10)
    assert spec.log_volume == pytest.approx(4 * math.log(2.0), abs=1e-10)


def test_float32_weight_is_decomposed_in_float64():
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    exact = np.linalg.svd(w.numpy().astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(spectrum_of(w).singular_values, exact, rtol=1e-13, atol=0)


def test_rank_deficient():
    # Numerically rank 2 (the product rounds the zero singular value to ~1e-16) ...
    spec = spectrum_of(built([3.0, 2.0, 0.0], 5, 4))
    assert spec.rank == 2
    assert spec.condition_number == math.inf
    assert spec.log_volume == -math.inf
    np.testing.assert_allclose(spec.singular_values[:2], [3.0, 2.0], atol=1e-10)
    # ... exactly rank deficient (a zero row), and the zero matrix.
    w = torch.randn(4, 6, dtype=torch.float64)
    w[2] = 0
    spec = spectrum_of(w)
    assert (spec.rank, spec.condition_number, spec.log_volume) == (3, math.inf, -math.inf)
    # A float32 matrix of rank 2 in exact arithmetic: its rounding noise (~1e-7 relative) is below
    # the float32 tolerance, so it counts as rank 2 although float64 sees 4 nonzero values.
    w32 = torch.arange(24, dtype=torch.float32).reshape(4, 6).sin()  # sin(a + b) = sum of 2 products
    spec = spectrum_of(w32)
    assert spec.singular_values[-1] > 0 and spec.rank == 2 and spec.condition_number == math.inf
    zero = spectrum_of(torch.zeros(3, 3))
    assert (zero.rank, zero.effective_rank, zero.stable_rank, zero.condition_number) == (0, 0.0, 0.0, math.inf)


def test_conv_weight_is_filter_matrix():
    conv = nn.Conv2d(3, 4, kernel_size=(2, 3), bias=False)
    w = torch.randn(4, 3, 2, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        conv.weight.copy_(w)
    # The documented matrix, written out by hand: row o, column (c, i, j) channel-major.
    m = np.zeros((4, 18))
    for o in range(4):
        for c in range(3):
            for i in range(2):
                for j in range(3):
                    m[o, c * 6 + i * 3 + j] = w[o, c, i, j]
    # It is the map from each receptive-field patch (im2col) to the output pixel.
    x = torch.randn(2, 3, 5, 6)
    patches = F.unfold(x, kernel_size=(2, 3)).double()  # [batch, 18, positions]
    out = conv(x).detach().double().reshape(2, 4, -1)
    np.testing.assert_allclose(torch.from_numpy(m) @ patches, out, atol=1e-4)
    spec = weight_spectra(nn.Sequential(conv))["0"]
    assert spec.shape == (4, 18) and spec.weight_shape == (4, 3, 2, 3)
    np.testing.assert_allclose(spec.singular_values, np.linalg.svd(m, compute_uv=False), rtol=1e-12)
    np.testing.assert_array_equal(spec.singular_values, spectrum_of(w.reshape(4, -1)).singular_values)


def test_grouped_conv_shape():
    spec = weight_spectra(nn.Sequential(nn.Conv1d(6, 4, kernel_size=3, groups=2)))["0"]
    assert spec.shape == (4, 3 * 3) and spec.singular_values.shape == (4,)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU())
        self.fc = nn.Linear(12, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.fc(self.block(x).flatten(1))))


def test_layer_selection():
    net = Net()
    assert list(weight_spectra(net)) == ["block.0", "fc", "head"]
    assert list(weight_spectra(net, layers=["head", "block.0"])) == ["head", "block.0"]
    assert list(weight_spectra(net, layers="fc")) == ["fc"]
    by_module = weight_spectra(net, layers=[net.fc])
    np.testing.assert_array_equal(by_module["fc"].singular_values, spectrum_of(net.fc.weight).singular_values)


def test_bad_arguments():
    net = Net()
    with pytest.raises(ValueError, match="layers.*'nope'"):
        weight_spectra(net, layers=["fc", "nope"])
    with pytest.raises(ValueError, match="layers.*ReLU"):
        weight_spectra(net, layers=["block.1"])
    with pytest.raises(ValueError, match="layers.*not a submodule"):
        weight_spectra(net, layers=[nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="layers"):
        weight_spectra(net, layers=[])
    with pytest.raises(ValueError, match="layers"):
        representation_divergence(net, torch.randn(20, 2, 6), torch.randn(20, 2, 6), layers=["nope"])
    with pytest.raises(TypeError, match="model"):
        weight_spectra({"fc": torch.randn(3, 3)})
    with pytest.raises(TypeError, match="model"):
        representation_divergence(lambda x: x, torch.randn(20, 2), torch.randn(20, 2))
    with pytest.raises(ValueError, match="weight"):
        spectrum_of(torch.randn(5))
    with pytest.raises(ValueError, match="weight.*NaN"):
        spectrum_of(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="model has no nn.Linear"):
        weight_spectra(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="max_samples"):
        representation_divergence(net, torch.randn(20, 2, 6), torch.randn(20, 2, 6), max_samples=0)


def identity_first():
    """Linear(2, 2) with weight I and bias 0, then more layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    return model


def gaussians(n, mu, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g) + torch.tensor(mu)


def test_gaussian_shift_gives_closed_form_kl():
    # D(N(0, I) || N(mu, I)) = |mu|^2 / 2 = 0.625. With n = 4000 the estimator's stderr is about
    # 0.022 (and it understates the spread a little: kNN terms are weakly dependent), so allow 4 of them.
    model = identity_first()
    train, test = gaussians(4000, [1.0, 0.5], seed=0)
    est = representation_divergence(model, train, test)["0"]
    assert est.stderr < 0.03
    assert abs(est - 0.625) < 4 * est.stderr
    assert est.details["layer"] == "0" and est.details["features"] == 2 and est.n == 4000


def test_same_distribution_near_zero():
    model = identity_first()
    train, test = gaussians(4000, [0.0, 0.0], seed=1)
    result = representation_divergence(model, train, test, layers=["0", "2"])
    assert set(result) == {"0", "2"}
    for est in result.values():
        assert abs(est) < 4 * est.stderr


def hooks(model):
    return [name for name, m in model.named_modules() if m._forward_hooks]


def test_hooks_removed_and_modes_restored():
    model = identity_first()
    model.train()
    model[1].eval()  # a mixed state, restored module by module
    train, test = gaussians(300, [0.0, 0.0], seed=2)
    representation_divergence(model, train, test)
    assert hooks(model) == []
    assert [m.training for m in model.modules()] == [True, True, False, True]
    # The same after an error: ReLU zeros duplicate rows, and the error names the layer.
    relu_net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with torch.no_grad():
        relu_net[0].weight.copy_(torch.eye(2))
        relu_net[0].bias.fill_(-0.5)
    relu_net.train()
    with pytest.raises(ValueError, match="layer '1':.*duplicates"):
        representation_divergence(relu_net, train, test, layers=["1"])
    assert hooks(relu_net) == [] and all(m.training for m in relu_net.modules())
    # The estimator's own options pass through: jitter breaks the ties.
    est = representation_divergence(relu_net, train, test, layers=["1"], jitter=1e-6)["1"]
    assert math.isfinite(est)


def test_dataloader_input_and_subsampling():
    model = identity_first()
    train, test = gaussians(1000, [1.0, 0.0], seed=3)
    loader = DataLoader(TensorDataset(train, torch.zeros(1000)), batch_size=128)
    from_tensors = representation_divergence(model, train, test)["0"]
    from_loader = representation_divergence(model, loader, DataLoader(test, batch_size=100))["0"]
    # All rows kept either way: the same samples, the same estimate.
    assert from_loader.value == pytest.approx(from_tensors.value, abs=1e-9)
    # Streamed subsampling keeps exactly max_samples rows, deterministically per seed.
    a = representation_divergence(model, loader, test, max_samples=300, seed=5)["0"]
    b = representation_divergence(model, loader, test, max_samples=300, seed=5)["0"]
    assert a.n == 300 and a.details["n_test"] == 300 and a.value == b.value
    # Tensor and loader paths draw the same keys, so they keep the same rows.
    c = representation_divergence(model, train, test, max_samples=300, seed=5)["0"]
    assert c.value == pytest.approx(a.value, abs=1e-9)

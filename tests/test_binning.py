"""Information-plane binning (infolens.infoplane.binning): plug-in I(X;T) = H(T) and I(T;Y) of
binned activations, on hand-made layers whose symbol counts are known, against an independent
numpy reference, and on the properties the definitions promise (bounds, invariances, bad input)."""

import math

import numpy as np
import pytest
import torch

from conftest import requires_gpu
from infolens.infoplane import binning
from infolens.infoplane.binning import binned_information

METHODS = ["fixed", "adaptive"]


def entropy_of_counts(counts):
    p = np.asarray(counts, dtype=np.float64) / np.sum(counts)
    return float(-(p * np.log(p)).sum())


def four_groups(per_group=24, units=3, seed=0):
    """4 groups of identical rows (distinct group centres), and group ids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, units)) * 3
    group = np.repeat(np.arange(4), per_group)
    return centres[group], group


@pytest.mark.parametrize("method", METHODS)
def test_four_equal_groups(method):
    x, group = four_groups()
    ixt, ity = binned_information(x, group, method=method)
    assert ixt.value == pytest.approx(math.log(4), abs=1e-14)
    assert ity.value == pytest.approx(math.log(4), abs=1e-14)
    assert ixt.details["symbols"] == 4 and ixt.n == 96
    # Labels independent of the groups by construction: each group holds labels 0, 1, 2 eight times.
    independent = np.tile(np.repeat(np.arange(3), 8), 4)
    ixt2, ity2 = binned_information(x, independent, method=method)
    assert ixt2.value == ixt.value
    assert ity2.value == 0.0  # integer-count ratios are exactly 1


@pytest.mark.parametrize("method", METHODS)
def test_unequal_groups_exact_entropy(method):
    counts = [50, 30, 15, 5]
    x = np.repeat(np.array([[-2.0, 1.0], [0.0, 1.0], [2.0, -1.0], [2.0, 3.0]]), counts, axis=0)
    labels = np.repeat([0, 0, 1, 1], counts)  # T determines Y: I(T;Y) = H(Y)
    ixt, ity = binned_information(x, labels, method=method, bins=8)
    assert ixt.value == pytest.approx(entropy_of_counts(counts), abs=1e-14)
    assert ity.value == pytest.approx(entropy_of_counts([80, 20]), abs=1e-14)
    assert ixt.details["symbols"] == 4


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_function_of_labels(method):
    rng = np.random.default_rng(1)
    y = rng.choice(5, size=700, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    t = np.eye(5)[y] * np.array([0.5, -1.0, 2.0, 0.25, 3.0])  # one-hot, scaled: injective in y
    ixt, ity = binned_information(t, y, method=method)
    h_y = entropy_of_counts(np.bincount(y))
    assert ity.value == pytest.approx(h_y, abs=1e-13)
    assert ixt.value == pytest.approx(h_y, abs=1e-13)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("units, bins", [(1, 30), (2, 5), (3, 3), (20, 2), (50, 30)])
def test_bounds_on_random_data(method, units, bins):
    rng = np.random.default_rng(units * 100 + bins)
    n = 500
    x = np.tanh(rng.standard_normal((n, units)))
    y = rng.integers(0, 4, size=n)
    ixt, ity = binned_information(x, y, method=method, bins=bins)
    h_y = entropy_of_counts(np.bincount(y))
    assert -1e-12 <= ity.value <= min(ixt.value, h_y) + 1e-12
    assert 0 <= ixt.value <= math.log(n) + 1e-12
    assert math.isnan(ixt.stderr) and ixt.n == n and ity.n == n
    assert ixt.details["symbols"] <= n


def reference_fixed(x, y, bins, value_range=None):
    """Independent numpy reference: half-open bins [e_j, e_j+1), last bin closed, np.unique rows."""
    lo, hi = (x.min(), x.max()) if value_range is None else value_range
    edges = np.linspace(lo, hi, bins + 1)
    index = np.searchsorted(edges[1:-1], x, side="right")
    _, t, c_t = np.unique(index, axis=0, return_inverse=True, return_counts=True)
    t = t.reshape(-1)
    h_t = entropy_of_counts(c_t)
    joint = np.unique(np.stack([t, y], axis=1), axis=0, return_counts=True)[1]
    h_y = entropy_of_counts(np.unique(y, return_counts=True)[1])
    return h_t, h_t + h_y - entropy_of_counts(joint), len(c_t)


@pytest.mark.parametrize("seed, units, bins", [(0, 7, 3), (1, 40, 2), (2, 5, 4), (3, 200, 2)])
def test_fixed_matches_numpy_reference_across_blocks(monkeypatch, seed, units, bins):
    # Small blocks so rows are hashed over many column blocks (and collisions would be caught).
    monkeypatch.setattr(binning, "_BLOCK", 300 * 3)
    rng = np.random.default_rng(seed)
    # Discrete-ish data: many repeated rows, values on and between edges.
    x = rng.integers(0, 5, size=(300, units)).astype(np.float64) / 4
    x[:150] = x[150:]  # every row appears at least twice
    y = rng.integers(0, 3, size=300)
    ixt, ity = binned_information(x, y, bins=bins)
    h_t, i_ty, symbols = reference_fixed(x, y, bins)
    assert ixt.details["symbols"] == symbols
    assert ixt.value == pytest.approx(h_t, abs=1e-12)
    assert ity.value == pytest.approx(i_ty, abs=1e-12)


def test_hash_collision_falls_back_to_exact_rows():
    index = torch.tensor([[0, 1], [1, 0], [0, 1], [2, 2], [1, 0]], dtype=torch.uint8)
    codes = binning._codes(torch.zeros(5, dtype=torch.int64), index)  # every key collides
    assert codes.tolist() == torch.unique(index.long(), dim=0, return_inverse=True)[1].tolist()
    assert len(set(codes.tolist())) == 3


def test_adaptive_equal_count_bins_exact():
    # One unit of distinct values: bin j holds floor((j+1)M/bins) - floor(jM/bins) of them.
    rng = np.random.default_rng(5)
    m, bins = 1000, 30
    x = rng.permutation(np.linspace(-3, 7, m) ** 3)
    ixt, _ = binned_information(x, np.zeros(m, dtype=int), method="adaptive", bins=bins)
    counts = [(j + 1) * m // bins - j * m // bins for j in range(bins)]
    assert ixt.details["bins"] == bins and ixt.details["symbols"] == bins
    assert ixt.value == pytest.approx(entropy_of_counts(counts), abs=1e-13)
    assert len(ixt.details["edges"]) == bins + 1


def test_adaptive_invariant_under_increasing_map_fixed_is_not():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2000, 2))
    y = (x[:, 0] + 0.5 * rng.standard_normal(2000) > 0).astype(int)
    a = binned_information(x, y, method="adaptive", bins=5)
    b = binned_information(np.exp(x), y, method="adaptive", bins=5)
    assert (a[0].value, a[1].value) == (b[0].value, b[1].value)
    assert a[0].details["symbols"] == b[0].details["symbols"]
    np.testing.assert_allclose(np.exp(a[0].details["edges"]), b[0].details["edges"], rtol=1e-12)
    f = binned_information(x, y, method="fixed", bins=5)
    g = binned_information(np.exp(x), y, method="fixed", bins=5)
    assert abs(f[0].value - g[0].value) > 0.1  # exp crowds most values into the lowest bins
    assert abs(f[1].value - g[1].value) > 1e-3


def test_value_range_rules():
    y = np.array([0, 1, 0, 1])
    # Bins are [e_j, e_j+1); the top edge goes in the last bin: -1, -0.5 | 0.999, 1 with 2 bins.
    ixt, _ = binned_information(np.array([-1.0, -0.5, 0.999, 1.0]), y, bins=2, value_range=(-1, 1))
    assert ixt.details["symbols"] == 2 and ixt.value == pytest.approx(math.log(2), abs=1e-15)
    assert ixt.details["range"] == (-1.0, 1.0) and ixt.details["range_from"] == "value_range"
    # The range decides the bins: on the data's range these are 4 bins, on (-1, 1) all one bin.
    x = np.array([0.0, 0.1, 0.2, 0.4])
    assert binned_information(x, y, bins=4)[0].value == pytest.approx(math.log(4), abs=1e-15)
    assert binned_information(x, y, bins=4, value_range=(-1, 1))[0].value == 0.0
    # Outside the given range is an error, never a clip, however small the excess.
    for bad in (np.array([-0.5, 0.0, 0.5, 1.0 + 1e-12]), np.array([-2.0, 0.0, 0.5, 0.7])):
        with pytest.raises(ValueError, match="value_range"):
            binned_information(bad, y, value_range=(-1, 1))
    # float32 0.1 is above the float64 0.1: outside (-0.1, 0.1), comparisons are exact.
    with pytest.raises(ValueError, match="1 value"):
        binned_information(torch.tensor([0.0, 0.1, -0.05, 0.05]), y, value_range=(-0.1, 0.1))


def test_float32_values_compared_exactly_with_float64_edges():
    # Edge 7 of 10 on (0, 1) is not a float32 number; its float32 neighbour below lies in bin 6.
    edge = float(torch.linspace(0, 1, 11, dtype=torch.float64)[7])
    below = np.float32(edge)
    assert float(below) < edge
    x = torch.tensor([0.65, below, 0.75], dtype=torch.float32)
    ixt, ity = binned_information(x, np.array([0, 0, 1]), bins=10, value_range=(0, 1))
    assert ixt.details["symbols"] == 2
    assert ity.value == pytest.approx(entropy_of_counts([2, 1]), abs=1e-15)  # {0.65, below}, {0.75}


def test_relu_zeros_merge_adaptive_edges():
    rng = np.random.default_rng(7)
    m = 3000
    x = np.concatenate([np.zeros(1800), rng.uniform(0.1, 5.0, size=1200)])  # exactly 60% zeros
    x = rng.permutation(x)
    ixt, ity = binned_information(x, (x > 2).astype(int), method="adaptive", bins=30)
    # Quantile edges 1..17 are 0 (merged, and dropped as equal to the minimum); edge 18 is the
    # first positive value: one bin of all the zeros, then 12 equal-count bins of 100 positives.
    assert ixt.details["bins"] == 13 and ixt.details["bins_requested"] == 30
    assert "13 of 30 bins" in ixt.method
    assert ixt.value == pytest.approx(entropy_of_counts([1800] + [100] * 12), abs=1e-13)
    assert np.all(np.diff(ixt.details["edges"]) > 0)
    assert math.isfinite(ity.value) and 0 <= ity.value <= ixt.value + 1e-12
    # Several ReLU units at once: still finite, fewer bins than asked, all reported.
    relu = np.maximum(rng.standard_normal((2000, 10)) - 0.25, 0)  # about 60% zeros
    ixt, ity = binned_information(relu, rng.integers(0, 2, 2000), method="adaptive")
    assert 1 < ixt.details["bins"] < 30 and len(ixt.details["edges"]) == ixt.details["bins"] + 1
    assert math.isfinite(ixt.value) and math.isfinite(ity.value)


def test_constant_layer_is_one_symbol():
    y = np.array([0, 1, 0, 1, 1])
    for method in METHODS:
        ixt, ity = binned_information(np.full((5, 3), 0.7), y, method=method)
        assert ixt.value == 0.0 and ity.value == 0.0 and ixt.details["symbols"] == 1
    assert binned_information(np.full(5, 0.7), y, method="adaptive")[0].details["bins"] == 1


@pytest.mark.parametrize("method", METHODS)
def test_base_two_gives_bits(method):
    x, group = four_groups(seed=3)
    labels = group % 3
    nats = binned_information(x, labels, method=method)
    bits = binned_information(x, labels, method=method, base=2)
    assert bits[0].units == "bits" and nats[0].units == "nats"
    assert bits[0].value == pytest.approx(nats[0].value / math.log(2), rel=1e-15)
    assert bits[1].value == pytest.approx(nats[1].value / math.log(2), rel=1e-15)
    assert bits[0].value == pytest.approx(2.0, rel=1e-15)


@pytest.mark.parametrize("method", METHODS)
def test_inputs_numpy_torch_1d_agree(method):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((400, 4))
    y = rng.integers(0, 3, 400)
    ref = binned_information(x, y, method=method, bins=6)
    for xx, yy in [(torch.from_numpy(x), torch.from_numpy(y)), (x, y[:, None]), (x.tolist(), y.tolist())]:
        got = binned_information(xx, yy, method=method, bins=6)
        assert (got[0].value, got[1].value) == (ref[0].value, ref[1].value)
    as_bool = binned_information(x, y > 0, method=method, bins=6)
    as_int = binned_information(x, (y > 0).astype(int), method=method, bins=6)
    assert as_bool[1].value == as_int[1].value
    one = binned_information(x[:, 0], y, method=method, bins=6)
    col = binned_information(x[:, :1], y, method=method, bins=6)
    assert (one[0].value, one[1].value) == (col[0].value, col[1].value)
    assert ref[0].method == f"binned I(X;T) ({method}, 6 bins)"
    assert ref[1].method == f"binned I(T;Y) ({method}, 6 bins)" and ref[1].details["classes"] == 3


def test_adaptive_float32_matches_float64():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((500, 6)).astype(np.float32)
    y = rng.integers(0, 2, 500)
    a = binned_information(x, y, method="adaptive")
    b = binned_information(x.astype(np.float64), y, method="adaptive")
    assert (a[0].value, a[1].value) == (b[0].value, b[1].value)


X = np.random.default_rng(10).standard_normal((20, 3))
Y = np.arange(20) % 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(bins=1), "bins must be an integer >= 2"),
    (dict(bins=2.5), "bins must be an integer >= 2"),
    (dict(bins=True), "bins must be an integer >= 2"),
    (dict(method="x"), "method must be one of"),
    (dict(method="adaptive", value_range=(-1, 1)), "value_range applies only"),
    (dict(value_range=(1, -1)), "value_range must be finite with low < high"),
    (dict(value_range=(0, math.inf)), "value_range must be finite"),
    (dict(value_range=5), "value_range must be a pair"),
    (dict(base=1), "base must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        binned_information(X, Y, **kwargs)


@pytest.mark.parametrize("x, y, error, match", [
    (X, Y[:-1], ValueError, "labels must hold one label per row"),
    (X, np.ones((20, 2), dtype=int), ValueError, "labels must be a 1-D"),
    (np.where(np.eye(20, 3) > 0, np.nan, X), Y, ValueError, "activations contains 3 NaN"),
    (np.ones((20, 3, 2)), Y, ValueError, "activations must be 1-D"),
    (np.array(["a"] * 20), Y, TypeError, "activations must hold real numbers"),
])
def test_bad_inputs(x, y, error, match):
    with pytest.raises(error, match=match):
        binned_information(x, y)


@requires_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    rng = np.random.default_rng(11)
    x = torch.from_numpy(np.maximum(rng.standard_normal((3000, 50)), 0).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 3000))
    cpu = binned_information(x, y, method=method, bins=4)
    gpu = binned_information(x.cuda(), y.cuda(), method=method, bins=4)
    assert gpu[0].details["symbols"] == cpu[0].details["symbols"]
    assert gpu[0].value == pytest.approx(cpu[0].value, abs=1e-12)
    assert gpu[1].value == pytest.approx(cpu[1].value, abs=1e-12)

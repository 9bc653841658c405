"""Kernel-matrix estimators against the ground truths of ESTIMATORS.md, on every path."""

import math

import numpy as np
import pytest
import torch

import infolens
from infolens import (alpha_req, diffusion_spectral_entropy, diffusion_spectral_mutual_info, matrix_entropy,
                      matrix_mutual_info, rank_me, total_correlation, vendi_score)

from conftest import ENGINES

ALPHAS = [0.5, 1.0, 2.0, 3.0, math.inf]
MATRIX_FREE = dict(method="matrix-free", rank=16, probes=8, steps=20)


def renyi_of(p, alpha):
    p = np.asarray(p, dtype=float)
    p = p[p > 0]
    if alpha == 1:
        return float(-(p * np.log(p)).sum())
    if alpha == math.inf:
        return float(-np.log(p.max()))
    return float(np.log((p ** alpha).sum()) / (1 - alpha))


def clusters(sizes, d=3, spread=0.0, seed=0, gap=100.0):
    """Clusters of (nearly) identical points, centres `gap` apart on the axes."""
    rng = np.random.default_rng(seed)
    parts = []
    for c, size in enumerate(sizes):
        centre = np.zeros(d)
        centre[c % d] = gap * (1 + c // d)
        parts.append(centre + spread * rng.standard_normal((size, d)))
    return np.concatenate(parts)


@pytest.mark.parametrize("method", ["exact", "matrix-free"])
@pytest.mark.parametrize("engine", ENGINES)
def test_identical_points_have_zero_entropy(method, engine):
    x = np.ones((300, 4)) * 2.5
    solver = dict(MATRIX_FREE, method=method) if method == "matrix-free" else {"method": method}
    for value in matrix_entropy(x, ALPHAS, backend=engine, **solver):
        assert abs(float(value)) < 1e-6
    assert abs(vendi_score(x, kernel="gaussian", backend=engine, **solver) - 1.0) < 1e-6
    assert abs(diffusion_spectral_entropy(x, backend=engine, **solver)) < 1e-6


@pytest.mark.parametrize("alpha", ALPHAS)
def test_clusters_of_identical_points_give_renyi_entropy_of_proportions(alpha):
    sizes = [50, 120, 30, 200]
    x = clusters(sizes)
    truth = renyi_of(np.array(sizes) / sum(sizes), alpha)
    exact = matrix_entropy(x, alpha, sigma=1.0, method="exact")
    # the matrix-free path on an exactly rank-4 matrix: Lanczos breaks down and must stop cleanly
    free = matrix_entropy(x, alpha, sigma=1.0, **MATRIX_FREE)
    assert exact == pytest.approx(truth, abs=1e-9)
    assert free == pytest.approx(truth, abs=1e-7)
    assert not math.isnan(free.stderr)


def test_distinct_points_at_tiny_bandwidth_and_orthonormal_features_give_log_n():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 5))
    assert matrix_entropy(x, [0.5, 1, 2, 5], sigma=1e-4, method="exact")[1] == pytest.approx(math.log(200), abs=1e-9)
    for value in matrix_entropy(np.eye(64), [0.5, 1, 2, math.inf], kernel="linear"):
        assert value == pytest.approx(math.log(64), abs=1e-10)
    assert vendi_score(np.eye(64)) == pytest.approx(64, rel=1e-10)


def test_duplicating_every_sample_leaves_the_entropy_unchanged():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((150, 3))
    once = matrix_entropy(x, [0.5, 1, 2, 4], sigma=0.8, method="exact")
    thrice = matrix_entropy(np.repeat(x, 3, axis=0), [0.5, 1, 2, 4], sigma=0.8, method="exact")
    for a, b in zip(once, thrice):
        assert a == pytest.approx(float(b), abs=1e-9)


def test_alpha_one_is_the_limit_and_entropy_decreases_in_alpha():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 6))
    values = matrix_entropy(x, [1 - 1e-6, 1.0, 1 + 1e-6, 0.5, 2.0, 3.0, math.inf], method="exact")
    below, one, above = (float(v) for v in values[:3])
    assert abs(below - one) < 1e-5 and abs(above - one) < 1e-5 and below > one > above
    ordered = [float(values[i]) for i in (3, 1, 4, 5, 6)]
    assert all(a > b for a, b in zip(ordered, ordered[1:]))


def test_alpha_two_identity_and_streaming_path():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((700, 4))
    sigma = 1.3
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    k = np.exp(-d2 / (2 * sigma ** 2))
    truth = -math.log((k ** 2).sum() / 700 ** 2)
    assert matrix_entropy(x, 2, sigma=sigma, method="exact") == pytest.approx(truth, abs=1e-9)
    streamed = matrix_entropy(x, 2, sigma=sigma, method="matrix-free")
    assert streamed == pytest.approx(truth, abs=1e-6)
    assert streamed.stderr == 0 and streamed.details["path"] == "matrix-free"


def test_joint_entropy_bounds_and_mutual_information():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 2))
    y = x[:, :1] + 0.3 * rng.standard_normal((500, 1))
    sa, sb = matrix_entropy(x, method="exact"), matrix_entropy(y, method="exact")
    joint = matrix_entropy([x, y], method="exact")
    assert max(sa, sb) <= joint <= sa + sb
    mi = matrix_mutual_info(x, y, method="exact")
    assert mi == pytest.approx(float(sa) + float(sb) - float(joint), abs=1e-10)
    assert 0 < mi <= min(sa, sb)
    tc = total_correlation([x, y, rng.standard_normal(500)], method="exact")
    assert tc > 0
    independent = matrix_mutual_info(rng.standard_normal(500), rng.standard_normal(500), method="exact")
    assert independent < 0.25 * mi


def test_label_kernel_mutual_information_with_itself_is_its_entropy():
    labels = np.repeat(np.eye(3), [40, 50, 60], axis=0)  # one-hot: L o L = L
    s = matrix_entropy(labels, kernel="cosine")
    assert matrix_mutual_info(labels, labels, kernel="cosine") == pytest.approx(float(s), abs=1e-10)
    assert s == pytest.approx(renyi_of(np.array([40, 50, 60]) / 150, 1), abs=1e-10)


def test_vendi_published_values():
    k = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert vendi_score(k, kernel="precomputed") == pytest.approx(2.1573, abs=5e-5)
    samples = np.array([0.0, 0, 10, 10, 20, 20])
    assert vendi_score(samples, kernel="laplacian", sigma=1.0) == pytest.approx(2.99999999588, abs=1e-9)
    assert vendi_score(k, q=math.inf, kernel="precomputed") == pytest.approx(3 / 1.9, rel=1e-12)


def test_linear_kernel_features_path_equals_exact_path():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12))
    for kernel in ("linear", "cosine"):
        feats = matrix_entropy(z, ALPHAS, kernel=kernel)
        exact = matrix_entropy(z, ALPHAS, kernel=kernel, method="exact")
        assert feats[0].details["path"] == "features"
        for a, b in zip(feats, exact):
            assert a == pytest.approx(float(b), abs=1e-9)
    # a Hadamard product of linear kernels: Kronecker features
    w = rng.standard_normal((300, 3))
    assert matrix_entropy([z[:, :4], w], kernel="linear") == pytest.approx(
        float(matrix_entropy([z[:, :4], w], kernel="linear", method="exact")), abs=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
def test_matrix_free_matches_exact_on_clustered_data(engine):
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((8, 10)) * 3
    x = centres[rng.integers(0, 8, 1500)] + 0.5 * rng.standard_normal((1500, 10))
    exact = matrix_entropy(x, [0.5, 1, 2, 3], method="exact", backend=engine)
    free = matrix_entropy(x, [0.5, 1, 2, 3], method="matrix-free", rank=48, probes=16, steps=30, backend=engine)
    # orders >= 1 to 0.01 nats; order 0.5 weights the smallest eigenvalues, where x^0.5 is not
    # smooth and m-node Gauss quadrature is biased by a few hundredths
    for e, f, tol in zip(exact, free, (0.05, 0.01, 0.01, 0.01)):
        assert abs(float(e) - float(f)) < tol
    assert free[1].stderr < 0.01


def test_diffusion_spectral_entropy_counts_components():
    x = clusters([40, 70, 25], gap=1000.0)  # three components far apart, each a single point
    for t in (1, 3, 10):
        assert diffusion_spectral_entropy(x, t, sigma=1.0) == pytest.approx(math.log(3), abs=1e-9)
        assert diffusion_spectral_entropy(x, t, sigma=1.0, base=2) == pytest.approx(math.log2(3), abs=1e-9)
    # median bandwidth: rescaling the data leaves DSE unchanged
    rng = np.random.default_rng(8)
    y = rng.standard_normal((300, 4))
    assert diffusion_spectral_entropy(y) == pytest.approx(float(diffusion_spectral_entropy(1000 * y)), abs=1e-9)
    assert 0 < diffusion_spectral_entropy(y) < math.log(300)
    free = diffusion_spectral_entropy(y, method="matrix-free", rank=48, probes=16, steps=30)
    assert free == pytest.approx(float(diffusion_spectral_entropy(y)), abs=0.02)


def test_diffusion_spectral_mutual_info_sees_labels_that_shape_the_data():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 3, 360)
    informative = labels[:, None] * 6.0 + rng.standard_normal((360, 2))
    unrelated = rng.standard_normal((360, 2))
    dependent = diffusion_spectral_mutual_info(informative, labels, seed=1)
    independent = diffusion_spectral_mutual_info(unrelated, labels, seed=1)
    assert dependent > 0.3
    assert abs(independent) < 0.1 < dependent - independent


def test_rank_me_and_alpha_req_closed_forms():
    assert rank_me(np.ones((50, 8))) == pytest.approx(1.0, abs=1e-12)
    assert rank_me(np.eye(20)[:, :7]) == pytest.approx(7.0, rel=1e-12)
    rng = np.random.default_rng(10)
    q, _ = np.linalg.qr(rng.standard_normal((400, 200)))
    for a in (0.8, 1.0, 1.7):
        lam = np.arange(1, 201, dtype=float) ** -a
        # centred columns with covariance eigenvalues exactly lam
        basis = q - q.mean(axis=0)
        basis, _ = np.linalg.qr(basis)
        z = basis * np.sqrt(lam * 400)
        fit = alpha_req(z, fit_range=(5, 150))
        assert fit == pytest.approx(a, abs=1e-8)
        assert rank_me(z, spectrum="covariance") == pytest.approx(math.exp(renyi_of(lam / lam.sum(), 1)), rel=1e-8)


@pytest.mark.parametrize("call, message", [
    (lambda: matrix_entropy(np.array([[1.0, np.nan], [0.0, 1.0]])), "NaN"),
    (lambda: matrix_entropy(np.ones((1, 3))), "at least 2 samples"),
    (lambda: matrix_entropy(np.ones((5, 3)), 0), "alpha must be > 0"),
    (lambda: matrix_entropy(np.ones((5, 3)), -1.0), "alpha must be > 0"),
    (lambda: matrix_entropy(np.ones((5, 3)), [1, float("nan")]), "alpha must be > 0"),
    (lambda: matrix_entropy(np.ones((5, 3)), sigma=0.0), "sigma must be a positive"),
    (lambda: matrix_entropy(np.ones((5, 3)), sigma=-2), "sigma must be a positive"),
    (lambda: matrix_entropy(np.ones((5, 3)), sigma="scott"), "sigma must be a positive number or one of"),
    (lambda: matrix_entropy(np.ones((5, 3)), kernel="rbf"), "kernel must be one of"),
    (lambda: matrix_entropy(np.array([[0.0], [1e30], [3e29]], dtype=np.float32), sigma=1.0), "too large"),
    (lambda: matrix_entropy(np.array([[0.0], [1e300]]), kernel="laplacian", sigma=1e-10), "too large"),
    (lambda: matrix_entropy(np.ones((5, 3)), method="features"), "method='features' needs linear"),
    (lambda: matrix_entropy(np.ones((5, 3)), method="svd"), "method must be one of"),
    (lambda: matrix_entropy(np.ones((5, 3)), probes=0, method="matrix-free"), "probes must be a positive"),
    (lambda: matrix_entropy(np.ones((5, 3)), rank=0, method="matrix-free"), "rank must be a positive"),
    (lambda: matrix_entropy(np.ones((5, 3)), kernel="precomputed"), "square kernel matrix"),
    (lambda: matrix_entropy(np.array([[1.0, 2.0], [0.0, 1.0]]), kernel="precomputed"), "symmetric"),
    (lambda: matrix_mutual_info(np.ones((5, 2)), np.ones((6, 2))), "same number of samples"),
    (lambda: vendi_score(np.zeros((4, 3))), "all-zero row"),
    (lambda: diffusion_spectral_entropy(np.ones((5, 2)), t=0), "t must be a positive"),
    (lambda: diffusion_spectral_mutual_info(np.ones((5, 2)), [0, 0, 1, 1, 2]), "single sample"),
    (lambda: rank_me(np.zeros((5, 2))), "no variance"),
    (lambda: alpha_req(np.random.default_rng(0).standard_normal((50, 4))), "needs at least 3"),
])
def test_bad_inputs_are_refused_with_a_clear_message(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_degenerate_spectra_give_no_nan():
    x = np.zeros((40, 3))
    x[0, 0] = 1e-9  # almost identical points
    for value in matrix_entropy(x, ALPHAS, sigma=1.0, **MATRIX_FREE) + matrix_entropy(x, ALPHAS, sigma=1.0):
        assert math.isfinite(value) and math.isfinite(value.stderr) and abs(value) < 1e-6


def test_estimates_carry_units_and_details():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((100, 3))
    nats = matrix_entropy(x)
    bits = matrix_entropy(x, base=2)
    assert bits == pytest.approx(float(nats) / math.log(2), rel=1e-12) and bits.units == "bits"
    assert nats.details["path"] == "exact" and nats.details["sigma"][0] > 0 and nats.n == 100
    assert isinstance(infolens.matrix_entropy(torch.from_numpy(x)), infolens.Estimate)


def test_bandwidth_rules_measure_what_they_say():
    from infolens.kernel.kernels import bandwidth
    rng = np.random.default_rng(12)
    x = torch.from_numpy(rng.standard_normal((300, 3)))
    d = torch.cdist(x, x)
    upper = d[torch.triu(torch.ones(300, 300, dtype=torch.bool), diagonal=1)]
    assert bandwidth(x, "median", 2.0, 0, "auto") == pytest.approx(float(upper.median()), rel=1e-12)
    tenth = d.sort(dim=1).values[:, 10]  # column 0 is the point itself
    assert bandwidth(x, "knn", 2.0, 0, "auto") == pytest.approx(float(tenth.mean()), rel=1e-12)
    assert bandwidth(x, "silverman", 2.0, 0, "auto") == pytest.approx(math.sqrt(3) * 300 ** (-1 / 7), rel=1e-15)
    # the kernel reports the sigma it used, and every rule is scale-equivariant
    for rule in ("median", "knn"):
        assert matrix_entropy(x, sigma=rule).details["sigma"][0] == pytest.approx(bandwidth(x, rule, 2.0, 0, "auto"))
        assert matrix_entropy(x, sigma=rule) == pytest.approx(float(matrix_entropy(7 * x, sigma=rule)), abs=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_give_the_cpu_values():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    xc = torch.from_numpy(x).cuda()
    for method in ("exact", "matrix-free"):
        cpu = matrix_entropy(x, [1, 2], method=method, sigma=4.0)
        gpu = matrix_entropy(xc, [1, 2], method=method, sigma=4.0)
        for a, b in zip(cpu, gpu):
            assert float(a) == pytest.approx(float(b), abs=1e-4)
    assert gpu[0].backend == "native"
    assert diffusion_spectral_entropy(xc) == pytest.approx(float(diffusion_spectral_entropy(x)), abs=1e-4)

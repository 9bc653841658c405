"""infolens.linalg: block Lanczos, deflated SLQ and trace estimators against dense algebra.

Dense float64 matrices with known spectra stand in for kernel and curvature operators; every
test counts on exact ground truth (torch.linalg.eigh, explicit moments, closed-form variances).
"""

import math

import numpy as np
import pytest
import torch

from infolens import linalg

F64 = torch.float64


def spectral_matrix(values, seed=0):
    """Q diag(values) Q^T for a random orthogonal Q: a symmetric matrix with a chosen spectrum."""
    values = torch.as_tensor(values, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(values.numel(), values.numel(), dtype=F64, generator=gen))
    return q @ torch.diag(values) @ q.T


def random_values(n, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind == "psd":
        return torch.rand(n, dtype=F64, generator=gen).square()
    return torch.randn(n, dtype=F64, generator=gen) * torch.rand(n, dtype=F64, generator=gen)


def best(values, k, which):
    order = torch.argsort(values.abs() if which == "magnitude" else values, descending=True)
    return values[order][:k]


def entropy_terms(lam):
    """-lambda log lambda, 0 at and below 0 (round-off nodes of a PSD spectrum)."""
    keep = lam > 0
    return torch.where(keep, -lam * torch.log(torch.where(keep, lam, torch.ones_like(lam))), torch.zeros_like(lam))


def clustered_rbf(n, seed=4, sigma=3.0):
    """Trace-normalised RBF kernel of 6 Gaussian clusters in R^5 (median distance about 9, so
    sigma = 3 is a smooth kernel): a decaying kernel spectrum."""
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(6, 5, dtype=F64, generator=gen)
    x = centres[torch.randint(0, 6, (n,), generator=gen)] + 0.4 * torch.randn(n, 5, dtype=F64, generator=gen)
    k = torch.exp(-torch.cdist(x, x).square() / (2 * sigma ** 2))
    return k / k.trace()


# ---------------------------------------------------------------- top_eigenpairs


@pytest.mark.parametrize("n, k, kind, which", [
    (50, 3, "psd", "largest"), (200, 10, "psd", "largest"), (200, 10, "indefinite", "largest"),
    (300, 25, "indefinite", "magnitude"), (400, 40, "psd", "magnitude"), (120, 7, "indefinite", "magnitude"),
])
def test_top_eigenpairs_match_eigh(n, k, kind, which):
    values = random_values(n, kind, seed=n + k)
    a = spectral_matrix(values, seed=n)
    pairs = linalg.top_eigenpairs(a, k, which=which, tol=1e-10, max_calls=300)
    scale = float(values.abs().max())
    assert pairs.converged
    assert torch.allclose(pairs.values, best(values, k, which), rtol=0, atol=1e-8 * scale)
    v = pairs.vectors
    assert torch.allclose(v.T @ v, torch.eye(k, dtype=F64), atol=1e-12)
    # the residuals it reports (from the Lanczos relation) are the true ones
    true_residuals = (a @ v - v * pairs.values).norm(dim=0)
    assert torch.allclose(pairs.residuals, true_residuals, rtol=0, atol=1e-11 * scale)
    assert float(true_residuals.max()) <= 1e-10 * scale
    # the subspace: Davis-Kahan bounds the angle by residual / gap to the rest of the spectrum
    truth, vectors = torch.linalg.eigh(a)
    order = torch.argsort(truth.abs() if which == "magnitude" else truth, descending=True)
    wanted, rest = order[:k], order[k:]
    gap = float((best(values, k, which)[-1].abs() if which == "magnitude" else best(values, k, which)[-1])
                - (truth[rest].abs().max() if which == "magnitude" else truth[rest].max()))
    u = vectors[:, wanted]
    sin_angle = float(torch.linalg.matrix_norm(v - u @ (u.T @ v), ord=2))
    assert sin_angle <= 2 * math.sqrt(k) * float(true_residuals.max()) / gap + 1e-12


def test_top_eigenpairs_restart_converges_with_a_small_basis():
    values = random_values(300, "indefinite", seed=9)
    a = spectral_matrix(values, seed=9)
    op = linalg.as_operator(a)
    pairs = linalg.top_eigenpairs(op, 6, block=8, basis=30, tol=1e-9, max_calls=400)
    assert pairs.converged and pairs.calls == op.calls
    assert pairs.calls * 8 > 3 * 30  # the basis was restarted several times
    assert torch.allclose(pairs.values, best(values, 6, "largest"), rtol=0, atol=1e-8)
    assert torch.allclose(pairs.vectors.T @ pairs.vectors, torch.eye(6, dtype=F64), atol=1e-12)


def _cluster_gram(sizes):
    labels = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    return (labels[:, None] == labels[None, :]).to(F64)


@pytest.mark.parametrize("name, a, k, truth", [
    # Gram matrix of 3 clusters of identical points: eigenvalues = cluster sizes, then 0 (rank 3 < k)
    ("clusters", _cluster_gram([30, 50, 70]), 8, [70.0, 50.0, 30.0] + [0.0] * 5),
    ("identity", torch.eye(150, dtype=F64), 8, [1.0] * 8),
    ("zero", torch.zeros(150, 150, dtype=F64), 8, [0.0] * 8),
    ("ones", torch.ones(150, 150, dtype=F64), 8, [150.0] + [0.0] * 7),
    # multiplicities straddling k and the block
    ("repeated", spectral_matrix([3.0] * 12 + [2.0] * 2 + [0.5] * 86, seed=3), 13, [3.0] * 12 + [2.0]),
])
def test_top_eigenpairs_survive_low_rank_and_repeated_spectra(name, a, k, truth):
    pairs = linalg.top_eigenpairs(a, k)
    assert pairs.converged
    assert torch.isfinite(pairs.values).all() and torch.isfinite(pairs.vectors).all()
    assert torch.allclose(pairs.values, torch.tensor(truth, dtype=F64), rtol=0, atol=1e-9 * max(1.0, truth[0]))
    assert torch.allclose(pairs.vectors.T @ pairs.vectors, torch.eye(k, dtype=F64), atol=1e-12)
    assert float((a @ pairs.vectors - pairs.vectors * pairs.values).norm(dim=0).max()) <= 1e-8 * max(1.0, truth[0])


def test_top_eigenpairs_magnitude_on_a_low_rank_indefinite_matrix():
    values = torch.tensor([-5.0, 4.0, -4.0, 1.0] + [0.0] * 96, dtype=F64)  # a tie in magnitude, then zeros
    pairs = linalg.top_eigenpairs(spectral_matrix(values, seed=5), 6, which="magnitude")
    assert torch.allclose(pairs.values.abs(), torch.tensor([5.0, 4.0, 4.0, 1.0, 0.0, 0.0], dtype=F64), atol=1e-9)
    assert sorted(pairs.values[1:3].tolist()) == pytest.approx([-4.0, 4.0], abs=1e-9)


@pytest.mark.parametrize("k", [30, 45])
def test_top_eigenpairs_with_k_at_least_n_is_the_whole_spectrum_in_one_call(k):
    values = random_values(30, "indefinite", seed=7)
    op = linalg.as_operator(spectral_matrix(values, seed=7))
    pairs = linalg.top_eigenpairs(op, k)
    assert pairs.values.numel() == 30 and pairs.converged and op.calls == 1
    assert torch.allclose(pairs.values, values.sort(descending=True).values, atol=1e-12)


def test_top_eigenpairs_are_deterministic_and_report_non_convergence():
    a = spectral_matrix(torch.linspace(0, 1, 400, dtype=F64), seed=8)  # flat: slow to converge
    first = linalg.top_eigenpairs(a, 5, max_calls=3, seed=1)
    again = linalg.top_eigenpairs(a, 5, max_calls=3, seed=1)
    other = linalg.top_eigenpairs(a, 5, max_calls=3, seed=2)
    assert not first.converged and first.calls == 3
    assert torch.equal(first.values, again.values) and torch.equal(first.vectors, again.vectors)
    assert not torch.equal(first.values, other.values)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_operators_of_extreme_scale_neither_underflow_nor_overflow(scale):
    # a sum of squares of entries near 1e-200 is 0: read as a converged residual or a breakdown
    values = random_values(80, "psd", seed=12)
    a = spectral_matrix(values, seed=12) * scale
    pairs = linalg.top_eigenpairs(a, 5)
    assert pairs.converged and torch.allclose(pairs.values / scale, best(values, 5, "largest"), rtol=0, atol=1e-9)
    quad = linalg.spectral_quadrature(a, probes=4, steps=10, deflate=pairs)
    assert (quad.weights[:, -1] > 0).all()  # all 10 steps ran: no spurious breakdown


# ---------------------------------------------------------------- spectral_quadrature


@pytest.mark.parametrize("deflate", [0, 5])
def test_lanczos_quadrature_reproduces_moments_below_twice_the_steps(deflate):
    a = spectral_matrix(torch.rand(300, dtype=F64, generator=torch.Generator().manual_seed(1)), seed=1)
    z = torch.randn(300, 1, dtype=F64, generator=torch.Generator().manual_seed(3))
    steps = 6
    pairs = linalg.top_eigenpairs(a, deflate) if deflate else None
    quad = linalg.spectral_quadrature(a, probes=z, steps=steps, deflate=pairs)
    # ground truth: z'^T A'^j z' with z' = P z, A' = P A P, P the projector off the deflated vectors
    p = torch.eye(300, dtype=F64) - (pairs.vectors @ pairs.vectors.T if deflate else 0)
    zp, ap = p @ z, p @ a @ p
    for j in range(2 * steps):
        exact = float((zp.T @ torch.linalg.matrix_power(ap, j) @ zp).squeeze())
        estimate = float((quad.weights * quad.nodes ** j).sum())
        assert estimate == pytest.approx(exact, rel=1e-9)
    # degree 2m is past the rule's exactness: the check above is not vacuous
    high = float((zp.T @ torch.linalg.matrix_power(ap, 2 * steps) @ zp).squeeze())
    assert float((quad.weights * quad.nodes ** (2 * steps)).sum()) != pytest.approx(high, rel=1e-6)


def test_quadrature_trace_of_the_identity_function_is_the_trace():
    values = random_values(250, "indefinite", seed=11)
    a = spectral_matrix(values, seed=11)
    quad = linalg.spectral_quadrature(a, probes=40, steps=10, seed=2)
    (trace, se), (count, count_se) = quad.traces([lambda lam: lam, torch.ones_like])
    assert se > 0 and abs(trace - float(values.sum())) < 4 * se
    assert count == pytest.approx(250, abs=1e-9) and count_se < 1e-9  # ||z||^2 = n for signs
    assert quad.trace(lambda lam: lam) == (trace, se)
    assert linalg.spectral_quadrature(a, probes=40, steps=10, seed=2, deflate=0).trace(lambda lam: lam) == (trace, se)


def test_deflation_captures_a_low_rank_spectrum_exactly():
    p = torch.softmax(torch.randn(10, dtype=F64, generator=torch.Generator().manual_seed(2)), 0)
    a = spectral_matrix(torch.cat([p, torch.zeros(190, dtype=F64)]), seed=2)
    quad = linalg.spectral_quadrature(a, probes=8, steps=20, deflate=10)
    value, se = quad.trace(entropy_terms)
    assert value == pytest.approx(float(entropy_terms(p).sum()), abs=1e-10)
    assert se < 1e-12
    assert torch.isfinite(quad.nodes).all() and torch.isfinite(quad.weights).all()


@pytest.mark.parametrize("a, trace_exp", [
    (torch.eye(120, dtype=F64), 120 * math.e),  # every probe breaks down after one step: exact
    (torch.zeros(120, 120, dtype=F64), 120.0),
])
def test_plain_quadrature_of_degenerate_spectra_is_exact_and_finite(a, trace_exp):
    quad = linalg.spectral_quadrature(a, probes=6, steps=15)
    assert torch.isfinite(quad.nodes).all() and torch.isfinite(quad.weights).all()
    assert (quad.weights[:, 1:] == 0).all()  # stopped at the breakdown
    assert quad.calls == 1
    value, se = quad.trace(torch.exp)
    assert value == pytest.approx(trace_exp, abs=1e-9) and se < 1e-9


def test_quadrature_caps_steps_at_the_complement_and_handles_an_empty_one():
    a = spectral_matrix(random_values(12, "psd", seed=4), seed=4)
    op = linalg.as_operator(a)
    pairs = linalg.top_eigenpairs(op, 9)
    quad = linalg.spectral_quadrature(op, probes=5, steps=50, deflate=pairs)
    assert quad.nodes.shape == (5, 3) and quad.calls <= 3
    # 3 steps resolve the 3-dimensional complement, so each probe's rule is exact for its own
    # z'^T f(A') z'; what remains is the probes' Hutchinson noise, which the standard error reports
    value, se = quad.trace(torch.square)
    assert abs(value - float(torch.linalg.eigvalsh(a).square().sum())) < 5 * se + 1e-12
    whole = linalg.spectral_quadrature(a, deflate=12)
    assert whole.nodes.shape == (32, 0)
    assert whole.trace(torch.exp)[0] == pytest.approx(float(torch.linalg.eigvalsh(a).exp().sum()), rel=1e-12)


def test_deflation_cuts_the_error_of_plain_slq_on_a_kernel_spectrum():
    # von Neumann entropy of the n = 600 kernel (2.159 nats; lambda_40 = 1e-4, 0.3% of the mass
    # beyond it). Observed over seeds 0-9, 16 probes x 25 steps: plain SLQ rms error 0.25 nats,
    # deflated by 40 eigenpairs 8e-4 (max 1.6e-3), adding the control tr A = 1 8e-5 (max 1.5e-4);
    # seed 5 here: 0.23 +- 0.31, 1.3e-3 +- 1.3e-3, 1.5e-4 +- 7e-5 (error +- standard error).
    # With a sharper kernel (sigma = 1, 14% of the mass beyond lambda_40) deflation alone gave
    # 0.027 and the control 0.0026: what deflation leaves is the mass it did not capture.
    a = clustered_rbf(600)
    truth = float(entropy_terms(torch.linalg.eigvalsh(a)).sum())
    plain, plain_se = linalg.spectral_quadrature(a, probes=16, steps=25, seed=5).trace(entropy_terms)
    quad = linalg.spectral_quadrature(a, probes=16, steps=25, deflate=40, seed=5)
    deflated, deflated_se = quad.trace(entropy_terms)
    controlled, controlled_se = quad.trace(entropy_terms, controls=[(lambda lam: lam, 1.0)])
    assert abs(deflated - truth) < 0.01 and abs(controlled - truth) < 0.002
    # the standard errors say the same, and are honest
    assert plain_se > 0.05 and deflated_se < plain_se / 20 and controlled_se < deflated_se / 3
    assert abs(plain - truth) < 5 * plain_se and abs(deflated - truth) < 5 * deflated_se


# ---------------------------------------------------------------- trace estimators


def test_hutchinson_is_unbiased_with_the_rademacher_variance():
    a = spectral_matrix(torch.linspace(-1, 2, 40, dtype=F64), seed=6)
    variance = 2 * (float(a.square().sum()) - float(a.diagonal().square().sum()))
    probes = 4000
    estimate, se = linalg.hutchinson(a, probes=probes, seed=3)
    # z^T A z is a sum of many weakly dependent terms, near Gaussian: the sample variance of 4000
    # probes has a relative sd near sqrt(2/4000) = 2.2%, so 15% is > 6 sd away; the mean is
    # held to 5 standard errors. Neither fails by chance for any seed in practice.
    assert abs(estimate - float(a.trace())) < 5 * math.sqrt(variance / probes)
    assert se ** 2 * probes == pytest.approx(variance, rel=0.15)


def test_hutchpp_is_exact_on_low_rank_matrices_and_beats_hutchinson_on_decaying_spectra():
    a = spectral_matrix(torch.cat([torch.rand(20, dtype=F64) + 1, torch.zeros(180, dtype=F64)]))
    value, _ = linalg.hutchpp(a, matvecs=90)
    assert value == pytest.approx(float(a.trace()), rel=1e-10)
    # lambda_i = i^-2: the head Hutch++ takes exactly is most of the variance Hutchinson sees
    b = spectral_matrix(torch.arange(1, 301, dtype=F64) ** -2.0, seed=1)
    truth = float(b.trace())
    plain = sum(abs(linalg.hutchinson(b, probes=60, seed=s)[0] - truth) for s in range(20))
    sketched = sum(abs(linalg.hutchpp(b, matvecs=60, seed=s)[0] - truth) for s in range(20))
    assert sketched < plain / 20  # observed 60-120x over seeds 0-199


def test_operator_calls_are_counted_and_blocks_shared():
    a = spectral_matrix(torch.linspace(0, 1, 80, dtype=F64))
    op = linalg.as_operator(a)
    linalg.hutchinson(op, probes=30)
    assert (op.calls, op.columns) == (1, 30)
    op = linalg.as_operator(a)
    linalg.hutchpp(op, matvecs=30)
    assert (op.calls, op.columns) == (2, 30)
    op = linalg.as_operator(a)
    pairs = linalg.top_eigenpairs(op, 5)
    assert op.calls == pairs.calls
    quad = linalg.spectral_quadrature(op, probes=12, steps=15, deflate=pairs)
    assert op.calls - pairs.calls == quad.calls <= 15
    assert op.columns == pairs.calls * 8 + quad.calls * 12


def test_operator_wrapper_passes_blocks_on_and_converts_results():
    seen = []

    def matmul(v):
        seen.append((v.dtype, v.is_contiguous()))
        return (2 * v).to(torch.float32)

    op = linalg.Operator(matmul, 4)
    out = op(torch.ones(2, 4).T)  # float32, not contiguous
    assert seen == [(F64, True)] and out.dtype == F64 and torch.equal(out, torch.full((4, 2), 2.0, dtype=F64))
    assert linalg.as_operator(op) is op
    assert torch.equal(linalg.as_operator(np.eye(3))(torch.ones(3, 1, dtype=F64)), torch.ones(3, 1, dtype=F64))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, error, message", [
    (lambda: linalg.top_eigenpairs(torch.eye(4), 0), ValueError, "k must be a positive integer"),
    (lambda: linalg.top_eigenpairs(torch.eye(4), 2.5), ValueError, "k must be a positive integer"),
    (lambda: linalg.top_eigenpairs(torch.eye(4), 2, which="smallest"), ValueError, "which must be"),
    (lambda: linalg.top_eigenpairs(torch.eye(4), 2, tol=0), ValueError, "tol must be a positive number"),
    (lambda: linalg.top_eigenpairs(torch.eye(40), 20, block=4, max_calls=2), ValueError, "max_calls"),
    (lambda: linalg.top_eigenpairs(torch.eye(40), 10, basis=12), ValueError, "basis must hold"),
    (lambda: linalg.spectral_quadrature(torch.eye(4), probes=0), ValueError, "probes must be a positive integer"),
    (lambda: linalg.spectral_quadrature(torch.eye(4), probes=torch.ones(3, 2)), ValueError, "probes must be"),
    (lambda: linalg.spectral_quadrature(torch.eye(4), steps=0), ValueError, "steps must be a positive integer"),
    (lambda: linalg.spectral_quadrature(torch.eye(4), deflate="top"), TypeError, "deflate must be"),
    (lambda: linalg.spectral_quadrature(torch.eye(4), deflate=-1), ValueError, "deflate must be"),
    (lambda: linalg.hutchinson(torch.eye(4), probes=0), ValueError, "probes must be a positive integer"),
    (lambda: linalg.hutchpp(torch.eye(4), matvecs=2), ValueError, "matvecs must be at least 3"),
    (lambda: linalg.as_operator(torch.ones(3, 4)), ValueError, "A must be an Operator or a square matrix"),
    (lambda: linalg.as_operator(torch.triu(torch.ones(3, 3))), ValueError, "A must be symmetric"),
    (lambda: linalg.as_operator(torch.full((3, 3), math.nan)), ValueError, "A contains NaN"),
    (lambda: linalg.Operator(lambda v: v, 0), ValueError, "n must be a positive integer"),
    (lambda: linalg.Operator(lambda v: v[:-1], 5)(torch.ones(5, 2)), ValueError, "matmul returned shape"),
    (lambda: linalg.Operator(lambda v: v * math.inf, 5)(torch.ones(5, 2)), ValueError, "NaN or infinite"),
    (lambda: linalg.Operator(lambda v: v, 5)(torch.ones(4, 2)), ValueError, r"v must be a block of shape \[5, b\]"),
])
def test_bad_arguments_are_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------- devices


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_operators_give_the_cpu_results():
    a = clustered_rbf(300)
    cpu_pairs = linalg.top_eigenpairs(a, 10, seed=1)
    gpu_pairs = linalg.top_eigenpairs(a.cuda(), 10, seed=1)
    assert gpu_pairs.vectors.is_cuda and gpu_pairs.calls == cpu_pairs.calls
    assert torch.allclose(gpu_pairs.values, cpu_pairs.values, rtol=0, atol=1e-12)
    cpu = linalg.spectral_quadrature(a, probes=8, steps=12, deflate=cpu_pairs, seed=2).trace(entropy_terms)
    gpu = linalg.spectral_quadrature(a.cuda(), probes=8, steps=12, deflate=gpu_pairs, seed=2).trace(entropy_terms)
    assert gpu == pytest.approx(cpu, rel=1e-9, abs=1e-12)
    assert linalg.hutchpp(a.cuda(), seed=3)[0] == pytest.approx(linalg.hutchpp(a, seed=3)[0], rel=1e-10)


def test_diagonal_estimator_is_unbiased_with_per_entry_errors():
    gen = torch.Generator().manual_seed(21)
    a = torch.randn(30, 30, dtype=torch.float64, generator=gen)
    a = a + a.T
    op = linalg.as_operator(a)
    estimate, se = linalg.diagonal(op, probes=4000, seed=3)
    assert op.calls == 1 and estimate.shape == (30,)
    # per entry the sd of one probe is sqrt(sum_{j != i} A_ij^2): 4000 probes put every entry
    # within 5 standard errors (a miss has probability below 1e-5 across the 30 entries)
    truth_sd = torch.sqrt(a.square().sum(1) - a.diagonal().square())
    assert torch.allclose(se, truth_sd / 4000 ** 0.5, rtol=0.1)
    assert bool(((estimate - a.diagonal()).abs() < 5 * truth_sd / 4000 ** 0.5).all())
    diag_only = linalg.diagonal(torch.diag(torch.arange(5.0, dtype=torch.float64)), probes=3)
    assert torch.equal(diag_only[0], torch.arange(5.0, dtype=torch.float64)) and bool((diag_only[1] == 0).all())

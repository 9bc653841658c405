"""infolens.linalg: block Lanczos, deflated SLQ and trace estimators against dense algebra."""

import math

import pytest
import torch

from infolens import linalg


def spectral_matrix(values, seed=0):
    values = torch.as_tensor(values, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(values.numel(), values.numel(), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)))
    return q @ torch.diag(values) @ q.T


def xlogx(lam):
    keep = lam > 0
    return torch.where(keep, -lam * torch.log(torch.where(keep, lam, torch.ones_like(lam))), torch.zeros_like(lam))


@pytest.mark.parametrize("n, k, which", [(50, 3, "largest"), (200, 10, "largest"), (400, 25, "magnitude"),
                                         (120, 120, "largest")])
def test_top_eigenpairs_match_eigh(n, k, which):
    gen = torch.Generator().manual_seed(n)
    values = torch.randn(n, dtype=torch.float64, generator=gen) * torch.rand(n, dtype=torch.float64, generator=gen)  # indefinite
    a = spectral_matrix(values, seed=n)
    pairs = linalg.top_eigenpairs(a, k, which=which, tol=1e-9, max_calls=200)
    truth = values[torch.argsort(values.abs() if which == "magnitude" else values, descending=True)][:k]
    assert pairs.converged
    assert torch.allclose(pairs.values, truth, atol=1e-8 * float(values.abs().max()))
    v = pairs.vectors
    assert torch.allclose(v.T @ v, torch.eye(k, dtype=torch.float64), atol=1e-10)
    assert float((a @ v - v * pairs.values).norm(dim=0).max()) < 1e-7 * float(values.abs().max())


@pytest.mark.parametrize("name", ["clusters", "identity", "zero", "ones"])
def test_top_eigenpairs_survive_low_rank_and_repeated_spectra(name):
    n = 150
    if name == "clusters":  # Gram matrix of 3 clusters of identical points: eigenvalues = sizes
        labels = torch.tensor([0] * 30 + [1] * 50 + [2] * 70)
        a = (labels[:, None] == labels[None, :]).to(torch.float64)
        truth = [70.0, 50.0, 30.0] + [0.0] * 5
    elif name == "identity":
        a, truth = torch.eye(n, dtype=torch.float64), [1.0] * 8
    elif name == "zero":
        a, truth = torch.zeros(n, n, dtype=torch.float64), [0.0] * 8
    else:
        a, truth = torch.ones(n, n, dtype=torch.float64), [float(n)] + [0.0] * 7
    pairs = linalg.top_eigenpairs(a, 8)
    assert not torch.isnan(pairs.values).any() and not torch.isnan(pairs.vectors).any()
    assert torch.allclose(pairs.values, torch.tensor(truth, dtype=torch.float64), atol=1e-9 * max(1.0, truth[0]))
    assert torch.allclose(pairs.vectors.T @ pairs.vectors, torch.eye(8, dtype=torch.float64), atol=1e-10)


def test_lanczos_quadrature_reproduces_moments_below_twice_the_steps():
    values = torch.rand(300, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = spectral_matrix(values, seed=1)
    steps = 6
    quad = linalg.spectral_quadrature(a, probes=1, steps=steps, seed=3)
    z = (torch.randint(0, 2, (300, 1), generator=torch.Generator().manual_seed(3), dtype=torch.int8)
         .to(torch.float64) * 2 - 1)
    for j in range(2 * steps):
        exact = float((z.T @ torch.linalg.matrix_power(a, j) @ z).squeeze())
        estimate = float((quad.weights * quad.nodes ** j).sum())
        assert estimate == pytest.approx(exact, rel=1e-9)


def test_deflation_captures_a_low_rank_spectrum_exactly():
    p = torch.softmax(torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(2)), 0)
    a = spectral_matrix(torch.cat([p, torch.zeros(190, dtype=torch.float64)]), seed=2)
    op = linalg.as_operator(a)
    quad = linalg.spectral_quadrature(op, probes=8, steps=20, deflate=10)
    value, se = quad.trace(xlogx)
    assert value == pytest.approx(float(xlogx(p).sum()), abs=1e-10)
    assert se < 1e-10


def test_deflation_and_control_variates_cut_the_error_of_plain_slq():
    # an RBF kernel of clustered points, trace-normalised: most mass in a few eigenvalues
    gen = torch.Generator().manual_seed(4)
    centres = 3 * torch.randn(6, 5, dtype=torch.float64, generator=gen)
    x = centres[torch.randint(0, 6, (600,), generator=gen)] + 0.4 * torch.randn(600, 5, dtype=torch.float64, generator=gen)
    k = torch.exp(-torch.cdist(x, x).square() / 2)
    a = k / k.trace()
    truth = float(xlogx(torch.linalg.eigvalsh(a)).sum())
    plain = linalg.spectral_quadrature(a, probes=16, steps=25, seed=5).trace(xlogx)[0]
    quad = linalg.spectral_quadrature(a, probes=16, steps=25, deflate=40, seed=5)
    deflated = quad.trace(xlogx)[0]
    controlled, se = quad.trace(xlogx, controls=[(lambda lam: lam, 1.0)])
    assert abs(deflated - truth) < 0.05 and abs(controlled - truth) < 0.002 and se < 0.002
    assert abs(plain - truth) > 3 * abs(controlled - truth)


def test_operator_calls_are_counted_and_blocks_shared():
    a = spectral_matrix(torch.linspace(0, 1, 80, dtype=torch.float64))
    op = linalg.as_operator(a)
    linalg.hutchinson(op, probes=30)
    assert (op.calls, op.columns) == (1, 30)
    op = linalg.as_operator(a)
    linalg.hutchpp(op, matvecs=30)
    assert op.calls == 3
    pairs = linalg.top_eigenpairs(op, 5)
    before = op.calls
    quad = linalg.spectral_quadrature(op, probes=12, steps=15, deflate=pairs)
    assert op.calls - before == quad.calls <= 15


def test_hutchinson_is_unbiased_with_the_rademacher_variance():
    a = spectral_matrix(torch.linspace(-1, 2, 40, dtype=torch.float64), seed=6)
    variance = 2 * (float(a.square().sum()) - float(a.diagonal().square().sum()))
    estimates = torch.tensor([linalg.hutchinson(a, probes=1, seed=s)[0] for s in range(2000)], dtype=torch.float64)
    # 2000 draws: the mean is within 4 standard errors of the trace and the sample variance
    # within 15% of the formula (its relative sd here is about 5%), so this fails by chance < 1e-4
    assert abs(float(estimates.mean()) - float(a.trace())) < 4 * math.sqrt(variance / 2000)
    assert float(estimates.var()) == pytest.approx(variance, rel=0.15)


def test_hutchpp_is_exact_on_low_rank_matrices():
    a = spectral_matrix(torch.cat([torch.rand(20, dtype=torch.float64) + 1, torch.zeros(180, dtype=torch.float64)]))
    value, _ = linalg.hutchpp(a, matvecs=90)
    assert value == pytest.approx(float(a.trace()), rel=1e-10)


@pytest.mark.parametrize("call, message", [
    (lambda: linalg.top_eigenpairs(torch.eye(4), 0), "k must be a positive integer"),
    (lambda: linalg.top_eigenpairs(torch.eye(4), 2, which="smallest"), "which must be"),
    (lambda: linalg.spectral_quadrature(torch.eye(4), probes=0), "probes must be a positive integer"),
    (lambda: linalg.spectral_quadrature(torch.eye(4), steps=0), "steps must be a positive integer"),
    (lambda: linalg.hutchinson(torch.eye(4), probes=0), "probes must be a positive integer"),
    (lambda: linalg.hutchpp(torch.eye(4), matvecs=2), "at least 3"),
    (lambda: linalg.as_operator(torch.ones(3, 4)), "square matrix"),
    (lambda: linalg.Operator(lambda v: v[:-1], 5)(torch.ones(5, 2)), "returned"),
    (lambda: linalg.Operator(lambda v: v, 5)(torch.ones(4, 2)), "v must be a block"),
])
def test_bad_arguments_are_refused(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()

"""Curvature operators against closed forms and dense float64 Hessians, and the spectral
quantities built on them."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from infolens import linalg
from infolens.curvature import CurvatureOperator, curvature_spectrum
from infolens.curvature.operator import CONTEST_COLUMNS

HESSIAN_MODES = ["forward-over-reverse", "reverse-over-reverse", "finite-difference"]


pytestmark = pytest.mark.usefixtures("float64_default")


def dense(op):
    return op(torch.eye(op.n, dtype=torch.float64))


class Quadratic(nn.Module):
    """theta itself as the output: with loss 1/2 o^T A o + b^T o the Hessian is exactly A."""

    def __init__(self, n):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return self.theta.expand(x.shape[0], -1)


def quadratic_loss(a, b):
    return lambda out, y: (0.5 * out @ a * out).sum(1).mean() + (out @ b).mean()


@pytest.mark.parametrize("spectrum", ["psd", "indefinite", "degenerate"])
@pytest.mark.parametrize("mode", HESSIAN_MODES)
def test_quadratic_hessian_is_exact_in_every_mode(spectrum, mode):
    torch.manual_seed(0)
    values = {"psd": torch.rand(12) + 0.1, "indefinite": torch.randn(12),
              "degenerate": torch.tensor([2.0] * 6 + [0.0] * 6)}[spectrum]
    q, _ = torch.linalg.qr(torch.randn(12, 12))
    a = q @ torch.diag(values) @ q.T
    model = Quadratic(12)
    data = (torch.zeros(5, 1), torch.zeros(5))
    op = CurvatureOperator(model, quadratic_loss(a, torch.randn(12)), data, kind="hessian", mode=mode)
    tol = 1e-6 if mode == "finite-difference" else 1e-12
    assert torch.allclose(dense(op), a, atol=tol)


def test_linear_regression_and_logistic_regression_closed_forms():
    torch.manual_seed(1)
    x = torch.randn(40, 5)
    y = x @ torch.randn(5, 1) + 0.1 * torch.randn(40, 1)
    model = nn.Linear(5, 1, bias=False)
    truth = 2 / 40 * x.T @ x
    for kind in ("hessian", "ggn", "fisher"):
        assert torch.allclose(dense(CurvatureOperator(model, nn.MSELoss(), (x, y), kind=kind)), truth, atol=1e-12)
    labels = (torch.rand(40, 1) < 0.5).to(torch.float64)
    s = torch.sigmoid(model(x)).detach()[:, 0]
    truth = x.T @ torch.diag(s * (1 - s)) @ x / 40
    for kind in ("hessian", "ggn"):
        op = CurvatureOperator(model, nn.BCEWithLogitsLoss(), (x, labels), kind=kind, batch_size=7)
        assert torch.allclose(dense(op), truth, atol=1e-12)


def mlp():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4))


def dense_references(model, x, y, loss):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(v):
        out, i = {}, 0
        for name, shape in zip(names, shapes):
            out[name] = v[i:i + math.prod(shape)].reshape(shape)
            i += math.prod(shape)
        return out

    def outputs(v, inputs=x):
        return functional_call(model, unflat(v), (inputs,))

    # double backward, vectorised: torch.func's hessian (jacfwd or jacrev over jacrev) of a
    # LayerNorm model comes out wrong and asymmetric in torch 2.13, for either loss (infolens's
    # own modes, jvp of grad and batched double backward, agree with this one there)
    def total(v):
        return loss(outputs(v), y)

    try:
        h = torch.autograd.functional.hessian(total, flat, vectorize=True)
    except RuntimeError:  # an op without a batching rule for its double backward (GroupNorm's)
        h = torch.autograd.functional.hessian(total, flat)
    j = jacrev(outputs)(flat).reshape(-1, flat.numel())                      # [N * C, P]
    out = outputs(flat).detach()
    h_out = hessian(lambda o: loss(o.reshape(out.shape), y))(out.reshape(-1))  # [N * C, N * C]
    ggn = j.T @ h_out @ j
    grads = torch.stack([torch.func.grad(lambda v: loss(outputs(v, x[i:i + 1]), y[i:i + 1]))(flat)
                         for i in range(x.shape[0])])
    return h, ggn, grads.T @ grads / x.shape[0]


@pytest.mark.parametrize("mode", HESSIAN_MODES)
def test_mlp_against_dense_float64_curvatures_with_uneven_batches(mode):
    model = mlp()
    torch.manual_seed(3)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    loss = nn.CrossEntropyLoss()
    h, ggn, fisher = dense_references(model, x, y, loss)
    tol = 1e-6 if mode == "finite-difference" else 1e-11
    for batch_size in (None, 4):  # 4 + 4 + 2: the last batch is smaller
        op = CurvatureOperator(model, loss, (x, y), kind="hessian", mode=mode, batch_size=batch_size)
        assert torch.allclose(dense(op), h, atol=tol)
    assert torch.allclose(dense(CurvatureOperator(model, loss, (x, y), kind="ggn", batch_size=4)), ggn, atol=1e-11)
    assert torch.allclose(dense(CurvatureOperator(model, loss, (x, y), kind="empirical-fisher", batch_size=3)),
                          fisher, atol=1e-11)


def test_block_products_equal_column_by_column_and_one_pass_per_block():
    model = mlp()
    x, y = torch.randn(9, 3), torch.randint(0, 4, (9,))
    calls = []

    class CountingLoader:
        def __iter__(self):
            calls.append(1)
            return iter([(x[:5], y[:5]), (x[5:], y[5:])])

    op = CurvatureOperator(model, nn.CrossEntropyLoss(), CountingLoader(), kind="hessian", chunk=2)
    v = torch.randn(op.n, 7)
    calls.clear()
    block = op(v)
    assert len(calls) == 1  # one data pass for all 7 columns
    looped = torch.cat([op(v[:, i:i + 1]) for i in range(7)], dim=1)
    assert torch.allclose(block, looped, atol=1e-13)


def test_auto_holds_its_contest_on_a_few_columns_and_its_winner_computes_the_rest(monkeypatch):
    model = mlp()
    x, y = torch.randn(9, 3), torch.randint(0, 4, (9,))
    seen = []
    ways = CurvatureOperator._ways

    def counting(self, model_fn, theta, x, y, tangents):
        seen.append(next(iter(tangents.values())).shape[0])
        return ways(self, model_fn, theta, x, y, tangents)

    monkeypatch.setattr(CurvatureOperator, "_ways", counting)
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian", batch_size=5)
    v = torch.randn(op.n, CONTEST_COLUMNS + 3, dtype=torch.float64)
    product = op(v)
    assert seen[:2] == [CONTEST_COLUMNS, 3]  # the contest, then its winner on the rest
    given = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="hessian", mode=op.mode, chunk=op.chunk,
                              batch_size=5)
    assert torch.allclose(product, given(v), atol=1e-12)


def test_per_layer_subset_is_the_diagonal_block_and_model_mode_is_restored():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 2))
    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    model.train()
    model(x)  # running statistics move away from their initial values
    loss = nn.CrossEntropyLoss()
    model.eval()
    h, _, _ = dense_references(model, x, y, loss)
    model.train()
    full = CurvatureOperator(model, loss, (x, y), kind="hessian")
    assert torch.allclose(dense(full), h, atol=1e-11)  # eval-mode curvature: deterministic
    assert model.training
    last = CurvatureOperator(model, loss, (x, y), kind="hessian", params=model[4])
    p = last.n
    assert torch.allclose(dense(last), h[-p:, -p:], atol=1e-11)
    named = CurvatureOperator(model, loss, (x, y), kind="hessian", params=["4.weight"])
    assert torch.allclose(dense(named), h[-p:-2, -p:-2], atol=1e-11)


def test_spectrum_quantities_against_eigenvalues():
    torch.manual_seed(5)
    values = torch.cat([torch.logspace(1, -3, 20), torch.zeros(10)])
    q, _ = torch.linalg.qr(torch.randn(30, 30))
    a = q @ torch.diag(values) @ q.T
    op = linalg.as_operator(a)
    plain = curvature_spectrum(op, probes=6, steps=30)
    assert plain.calls == 21  # 21 distinct eigenvalues: every probe's Krylov space is then invariant
    # with the whole space deflated every quantity is exact, which checks the formulas
    spec = curvature_spectrum(op, probes=6, steps=30, deflate=30)
    assert spec.trace()[0] == pytest.approx(float(values.sum()), rel=1e-9)
    taus = np.array([1e-2, 1.0, 10.0])
    logdet, se = spec.log_det(taus)
    truth = np.array([float(torch.log1p(values / t).sum()) for t in taus])
    assert np.allclose(logdet, truth, rtol=1e-9) and logdet.shape == (3,)
    assert spec.effective_dimension(0.5)[0] == pytest.approx(float((values / (values + 0.5)).sum()), rel=1e-9)
    comp, _ = spec.complexity(np.array([1e-3, 1e-1]), radius=2.0)
    assert np.allclose(comp, [0.5 * float(torch.log1p(values * 4 / (2 * e)).sum()) for e in (1e-3, 1e-1)], rtol=1e-9)
    # the stochastic estimate: within a few of its own standard errors
    estimate, se = plain.log_det(taus)
    assert np.all(np.abs(estimate - truth) < 4 * se + 1e-9)
    grid, density = spec.density()
    assert np.trapezoid(density, grid) == pytest.approx(30, rel=1e-3)
    assert spec.negative_mass == pytest.approx(0, abs=1e-9)


def test_slq_on_a_model_uses_steps_data_passes_and_matches_dense_spectrum():
    model = mlp()
    x, y = torch.randn(30, 3), torch.randint(0, 4, (30,))
    op = CurvatureOperator(model, nn.CrossEntropyLoss(), (x, y), kind="ggn", batch_size=8)
    lam = torch.linalg.eigvalsh(dense(op))
    op.calls = 0
    spec = curvature_spectrum(op, probes=4, steps=op.n)
    assert op.calls == spec.calls <= op.n  # one data pass per step, all probes together
    value, se = spec.log_det(0.01)
    assert abs(value - float(torch.log1p(lam.clamp(min=0) / 0.01).sum())) < 4 * se


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="hess"), "kind must be one of"),
    (dict(mode="double-backward"), "mode must be one of"),
    (dict(params=["nope"]), "no parameter named"),
    (dict(params=[]), "no trainable parameters"),
    (dict(batch_size=0), "batch_size must be a positive"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CurvatureOperator(mlp(), nn.CrossEntropyLoss(), (torch.randn(4, 3), torch.randint(0, 4, (4,))), **kwargs)
    with pytest.raises(ValueError, match="same number of samples"):
        CurvatureOperator(mlp(), nn.CrossEntropyLoss(), (torch.randn(4, 3), torch.randint(0, 4, (5,))))
    with pytest.raises(ValueError, match="tau must be a positive"):
        curvature_spectrum(torch.eye(3), probes=2, steps=3).log_det(-1.0)


def test_plots_draw_the_density_and_the_complexity_curve():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from infolens.curvature.plots import plot_complexity, plot_density
    values = torch.cat([torch.logspace(1, -3, 20), torch.zeros(10)])
    spec = curvature_spectrum(torch.diag(values), probes=4, steps=30, deflate=30)
    ax = plot_density(spec)
    x, y = ax.lines[0].get_data()
    assert np.trapezoid(y, x) == pytest.approx(30, rel=0.05)  # the drawn curve integrates to n
    ax = plot_complexity(spec, eps2=np.array([1e-3, 1e-1]), radius=2.0)
    drawn = ax.lines[0].get_ydata()
    assert np.allclose(drawn, [0.5 * float(torch.log1p(values * 4 / (2 * e)).sum()) for e in (1e-3, 1e-1)])

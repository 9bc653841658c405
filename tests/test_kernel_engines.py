"""The native kernel-matrix engine against the torch reference: same function, to rounding."""

import numpy as np
import pytest
import torch

from infolens import _backend
from infolens.kernel.kernels import merged
from infolens.kernel.matrix import KernelMatrix
from infolens.reference import kernel as reference

pytestmark = pytest.mark.skipif(not _backend.native_available(), reason="native engine not built")

KIND_SETS = [["gaussian"], ["laplacian"], ["linear"], ["gaussian", "linear"], ["laplacian", "gaussian", "linear"]]


def dense_float64(factors):
    """K from the formulas, in float64 numpy, independent of both engines."""
    k = 1.0
    for kind, x in factors:
        x = x.numpy().astype(np.float64)
        if kind == "gaussian":
            k = k * np.exp(-((x[:, None] - x[None]) ** 2).sum(-1))
        elif kind == "laplacian":
            k = k * np.exp(-np.abs(x[:, None] - x[None]).sum(-1))
        else:
            k = k * (x @ x.T)
    return k


def random_factors(kinds, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    dims = [1, 3, 7, 65]
    return [(kind, (0.4 * torch.randn(n, dims[(seed + i) % 4], generator=gen)).to(dtype))
            for i, kind in enumerate(kinds)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 300, 1100])
@pytest.mark.parametrize("kinds", KIND_SETS)
def test_native_matmul_and_sum_squares_equal_the_formula_and_the_reference(dtype, n, kinds):
    factors = random_factors(kinds, n, dtype, seed=n + len(kinds))
    truth = dense_float64(factors)
    native = KernelMatrix(factors, backend="native")
    ref = KernelMatrix(factors, backend="reference")
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for b in (1, 5, 37):
        v = torch.randn(n, b, dtype=torch.float64, generator=torch.Generator().manual_seed(b))
        scale = torch.from_numpy(np.abs(truth) @ np.abs(v.numpy())) + 1e-300
        for matrix in (native, ref):
            got = matrix.matmul(v)
            assert got.dtype == torch.float64 and got.shape == (n, b)
            assert float(((got - torch.from_numpy(truth @ v.numpy())).abs() / scale).max()) < tol
    squares = (truth ** 2).sum()
    assert native.sum_squares() == pytest.approx(squares, rel=tol)
    assert ref.sum_squares() == pytest.approx(squares, rel=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["gaussian", "laplacian"])
def test_far_apart_points_give_the_identity(kind, dtype):
    """Distances up to 1e15 (exponents far past exp's underflow): every off-diagonal value is exactly 0."""
    x = torch.tensor([[0.0], [1e3], [-1e15], [1e15], [3e14]], dtype=dtype).repeat(1, 3)
    v = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    matrix = KernelMatrix([(kind, x)], backend="native")
    assert torch.equal(matrix.matmul(v), v.to(dtype).to(torch.float64))  # V enters in the points' dtype
    assert matrix.sum_squares() == 5.0


def test_native_results_do_not_depend_on_thread_count():
    factors = random_factors(["gaussian", "linear"], 2100, torch.float32, seed=3)
    matrix = _backend._native.KernelMatrix([(k, x.numpy()) for k, x in factors])
    v = np.random.default_rng(0).standard_normal((2100, 9))
    outs = []
    for threads in (1, 2, 3):
        out = np.empty_like(v)
        matrix.matmul(v, out, threads=threads)
        outs.append(out)
        assert matrix.sum_squares(threads=threads) == matrix.sum_squares(threads=1)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_diagonal_is_exactly_one_and_merging_exponentials_is_the_same_kernel():
    x = torch.randn(200, 5, dtype=torch.float64) * 1e3  # huge norms: the expansion would not give 0
    k = reference.kernel_dense([("gaussian", x)])
    assert torch.equal(k.diagonal(), torch.ones(200, dtype=torch.float64))
    ones = torch.eye(200, dtype=torch.float64)
    assert torch.equal(KernelMatrix([("gaussian", x)], backend="native").matmul(ones).diagonal(), k.diagonal())
    a, b = torch.randn(100, 2, dtype=torch.float64), torch.randn(100, 3, dtype=torch.float64)
    split = reference.kernel_dense([("gaussian", a), ("gaussian", b), ("laplacian", a), ("laplacian", b)])
    joined = reference.kernel_dense(merged([("gaussian", a), ("gaussian", b), ("laplacian", a), ("laplacian", b)]))
    assert torch.allclose(split, joined, rtol=1e-12, atol=0)


@pytest.mark.parametrize("factors, message", [
    ([], "non-empty"),
    ([("rbf", np.ones((3, 2)))], "unknown kernel kind"),
    ([("gaussian", np.ones((3, 2), dtype=np.float16))], "float32 or float64"),
    ([("gaussian", np.ones((3, 2))), ("linear", np.ones((4, 2)))], "shape"),
    ([("gaussian", np.ones((3, 2))), ("linear", np.ones((3, 2), dtype=np.float32))], "dtype float64"),
    ([("gaussian", np.ones((3, 2))[:, ::2])], "C-contiguous"),
    ([("gaussian", np.ones((0, 2)))], "at least one row"),
    ([("gaussian", np.ones((3, 0)))], "at least one column"),
    (["gaussian"], "pairs"),
])
def test_native_kernel_matrix_refuses_bad_factors(factors, message):
    with pytest.raises((ValueError, TypeError), match=message):
        _backend._native.KernelMatrix(factors)


def test_native_matmul_refuses_bad_blocks():
    matrix = _backend._native.KernelMatrix([("gaussian", np.ones((4, 2)))])
    for v, out, message in [(np.ones((3, 2)), np.empty((4, 2)), "v must have shape"),
                            (np.ones((4, 2), dtype=np.float32), np.empty((4, 2)), "v must have dtype"),
                            (np.ones((4, 2)), np.empty((4, 3)), "out must have shape"),
                            (np.ones((4, 0)), np.empty((4, 0)), "at least one column")]:
        with pytest.raises(ValueError, match=message):
            matrix.matmul(v, out)
    with pytest.raises(ValueError, match="threads"):
        matrix.sum_squares(threads=-1)

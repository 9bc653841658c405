"""The native engine and the torch reference compute the same function (docs/NATIVE_ABI.md):
equal keys, equal neighbour indices, equal counts, and so equal estimates, on fresh random
inputs of several sizes, dimensions, dtypes and tie structures."""

import math

import numpy as np
import pytest
import torch

import infolens as il
from infolens import _backend
from infolens.reference import ReferenceIndex

pytestmark = pytest.mark.skipif(not _backend.native_available(), reason="native engine not built")

DTYPES = [torch.float32, torch.float64]


def sample(kind, n, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
    elif kind == "ties":  # a small integer lattice: many equal distances and duplicate rows
        x = torch.randint(0, 4, (n, d), generator=g).double()
    else:  # "scaled": features of very different magnitude and offset
        x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, d, dtype=torch.float64) + 1e3
    return x.to(dtype).contiguous()


CASES = [(n, d, kind) for n in (7, 300, 1500) for d in (1, 2, 5, 12) for kind in ("gaussian", "ties", "scaled")]


@pytest.mark.parametrize("n, d, kind", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [math.inf, 2.0])
def test_knn_and_counts_equal(n, d, kind, dtype, p):
    x = sample(kind, n, d, dtype, seed=n * 31 + d)
    ref = ReferenceIndex(x, p)
    for algorithm in ("auto", "kdtree", "brute") + (("sorted",) if d == 1 else ()):
        nat = _backend.NativeIndex(x, p, algorithm)
        for k in sorted({1, min(4, n - 1), min(n - 1, 64)}):
            nk, ni = nat.knn(k)
            rk, ri = ref.knn(k)
            assert torch.equal(nk, rk), (algorithm, k)
            assert torch.equal(ni, ri), (algorithm, k)
            for strict in (True, False):
                radius = nk[:, -1]
                assert torch.equal(nat.count(radius, strict), ref.count(radius, strict)), (algorithm, k, strict)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [math.inf, 2.0, 1.5])
def test_queries_against_another_set(dtype, p):
    x = sample("gaussian", 800, 3, dtype, seed=1)
    q = sample("gaussian", 300, 3, dtype, seed=2)
    ref = ReferenceIndex(x, p)
    for algorithm in ("kdtree", "brute"):
        nat = _backend.NativeIndex(x, p, algorithm)
        nk, ni = nat.knn(5, q)
        rk, ri = ref.knn(5, q)
        if p == 1.5:  # pow() may round differently in C++ and torch: equal to rounding
            torch.testing.assert_close(nk, rk, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
        else:
            assert torch.equal(nk, rk) and torch.equal(ni, ri)
        radius = rk[:, 2]
        if p != 1.5:
            assert torch.equal(nat.count(radius, True, q), ref.count(radius, True, q))


@pytest.mark.parametrize("dtype", DTYPES)
def test_estimates_equal(dtype):
    rng = np.random.default_rng(7)
    n = 1200
    x = torch.tensor(rng.standard_normal((n, 2)), dtype=dtype)
    y = torch.tensor(rng.standard_normal((n, 1)), dtype=dtype) + x[:, :1]
    z = torch.tensor(rng.standard_normal((n, 2)), dtype=dtype)
    labels = rng.integers(0, 3, n)
    lattice = torch.tensor(rng.integers(0, 5, (n, 2)), dtype=dtype)
    calls = [
        lambda b: il.entropy(x, backend=b),
        lambda b: il.entropy(x, metric="euclidean", backend=b),
        lambda b: il.renyi_entropy(x, q=2, backend=b),
        lambda b: il.mutual_info(x, y, method="ksg1", backend=b),
        lambda b: il.mutual_info(x, y, method="ksg2", backend=b),
        lambda b: il.mutual_info(x, labels, backend=b),
        lambda b: il.mutual_info(lattice[:, :1], lattice[:, 1:] + lattice[:, :1], method="mixed", backend=b),
        lambda b: il.conditional_mutual_info(x, y, z, backend=b),
        lambda b: il.kl_divergence(x, z, backend=b),
    ]
    for call in calls:
        native, reference = call("native"), call("reference")
        assert native.backend == "native" and reference.backend == "reference"
        assert float(native) == float(reference)
        assert native.tie_fraction == reference.tie_fraction


def test_threads_do_not_change_results():
    from infolens import _native

    x = sample("ties", 3000, 3, torch.float64, seed=3)
    index = _native.Index(x.numpy(), "auto")
    outs = []
    for threads in (1, 2, 3):
        keys = torch.empty(3000, 6, dtype=torch.float64)
        idx = torch.empty(3000, 6, dtype=torch.int64)
        index.knn(6, math.inf, keys.numpy(), idx.numpy(), None, threads)
        counts = torch.empty(3000, dtype=torch.int64)
        index.count(keys[:, -1].contiguous().numpy(), math.inf, True, counts.numpy(), None, threads)
        outs.append((keys, idx, counts))
    for keys, idx, counts in outs[1:]:
        assert torch.equal(keys, outs[0][0]) and torch.equal(idx, outs[0][1]) and torch.equal(counts, outs[0][2])

"""The native module's own contract (docs/NATIVE_ABI.md): argument checks that raise instead of
crashing, outputs written in place, and exact results on inputs built to stress the engines."""

import math

import numpy as np
import pytest
import torch

from infolens import _backend
from infolens.reference import ReferenceIndex

pytestmark = pytest.mark.skipif(not _backend.native_available(), reason="native engine not built")

if _backend.native_available():
    from infolens import _native

rng = np.random.default_rng(60)
P = rng.standard_normal((40, 3))


def outputs(m, k, dtype=np.float64):
    return np.empty((m, k), dtype), np.empty((m, k), np.int64)


def test_index_attributes():
    index = _native.Index(P, "auto")
    assert (index.n, index.dim, index.dtype, index.algorithm) == (40, 3, "float64", "kdtree")
    assert _native.Index(P[:, :1].copy(), "auto").algorithm == "sorted"
    assert _native.Index(rng.standard_normal((40, 9)), "auto").algorithm == "brute"
    assert _native.Index(P.astype(np.float32), "brute").dtype == "float32"
    assert _native.max_threads() >= 1


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: _native.Index(P.astype(np.int64), "auto"), "points must have dtype float32 or float64"),
        (lambda: _native.Index(P[::2], "auto"), "points must be C-contiguous"),
        (lambda: _native.Index(P[0], "auto"), r"points must have shape \(\*, \*\)"),
        (lambda: _native.Index(np.zeros((0, 3)), "auto"), "points must have at least one row"),
        (lambda: _native.Index(np.zeros((5, 0)), "auto"), "points must have at least one column"),
        (lambda: _native.Index(np.r_[P, [[np.nan, 0, 0]]], "auto"), "points must be finite"),
        (lambda: _native.Index(P, "octree"), "algorithm must be one of"),
        (lambda: _native.Index(P, "sorted"), "algorithm 'sorted' needs one-dimensional points"),
        (lambda: _native.Index(P, "kdtree", -1), "leaf_size must be >= 0"),
    ],
)
def test_index_rejects(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("algorithm", ["kdtree", "brute"])
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda ix: ix.knn(0, math.inf, *outputs(40, 0)), r"k must be in \[1, 39\]"),
        (lambda ix: ix.knn(40, math.inf, *outputs(40, 40)), r"k must be in \[1, 39\]"),
        (lambda ix: ix.knn(3, 0.5, *outputs(40, 3)), "p must be >= 1"),
        (lambda ix: ix.knn(3, math.nan, *outputs(40, 3)), "p must be >= 1"),
        (lambda ix: ix.knn(3, math.inf, *outputs(40, 3), None, -1), "threads must be >= 0"),
        (lambda ix: ix.knn(3, math.inf, *outputs(40, 2)), r"out_keys must have shape \(40, 3\)"),
        (lambda ix: ix.knn(3, math.inf, *outputs(40, 3, np.float32)), "out_keys must have dtype float64"),
        (lambda ix: ix.knn(3, math.inf, np.empty((40, 3)), np.empty((40, 3), np.int32)), "out_idx must have dtype int64"),
        (lambda ix: ix.knn(3, math.inf, np.empty((3, 40)).T, np.empty((40, 3), np.int64)), "out_keys must be C-contiguous"),
        (lambda ix: ix.knn(3, math.inf, *outputs(5, 3), P[:5, :2].copy()), r"queries must have shape \(\*, 3\)"),
        (lambda ix: ix.knn(3, math.inf, *outputs(1, 3), np.array([[0.0, np.inf, 0.0]])), "queries must be finite"),
        (lambda ix: ix.knn(3, math.inf, *outputs(1, 3), [[0.0, 0.0, 0.0]]), "queries must be a numpy array"),
        (lambda ix: ix.count(np.ones(39), math.inf, True, np.empty(40, np.int64)), r"radius must have shape \(40,\)"),
        (lambda ix: ix.count(np.ones(40, np.float32), math.inf, True, np.empty(40, np.int64)), "radius must have dtype float64"),
        (lambda ix: ix.count(np.ones(40), math.inf, True, np.empty(40, np.int32)), "out must have dtype int64"),
    ],
)
def test_calls_reject(algorithm, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(_native.Index(P, algorithm))


def test_read_only_output_is_refused():
    keys, idx = outputs(40, 3)
    keys.flags.writeable = False
    with pytest.raises(ValueError, match="out_keys must be writeable"):
        _native.Index(P, "kdtree").knn(3, math.inf, keys, idx)


def test_index_owns_a_copy_of_its_points():
    points = P.copy()
    index = _native.Index(points, "kdtree")
    before = outputs(40, 3)
    index.knn(3, math.inf, *before)
    points[:] = 0.0
    after = outputs(40, 3)
    index.knn(3, math.inf, *after)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


def test_single_point_and_empty_queries():
    index = _native.Index(np.ones((1, 2)), "kdtree")
    keys, idx = outputs(1, 1)
    index.knn(1, math.inf, keys, idx, np.zeros((1, 2)))
    assert keys[0, 0] == 1.0 and idx[0, 0] == 0
    keys, idx = outputs(0, 1)
    index.knn(1, math.inf, keys, idx, np.zeros((0, 2)))
    counts = np.full(1, -7, np.int64)
    index.count(np.zeros(1), math.inf, False, counts)
    assert counts[0] == 0  # the only point is itself


@pytest.mark.parametrize("algorithm", ["kdtree", "brute", "sorted"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_duplicates(algorithm, dtype):
    # A fifth of the rows are one repeated point (an atom, as in ReLU zeros): ties by index.
    n, d = 5000, 1 if algorithm == "sorted" else 2
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(61), dtype=torch.float64)
    x[torch.randperm(n, generator=torch.Generator().manual_seed(62))[: n // 5]] = 0.0
    x = x.to(dtype)
    nat, ref = _backend.NativeIndex(x, math.inf, algorithm), ReferenceIndex(x, math.inf)
    for k in (1, 7, 64):
        nk, ni = nat.knn(k)
        rk, ri = ref.knn(k)
        assert torch.equal(nk, rk) and torch.equal(ni, ri), k
        for strict in (True, False):
            assert torch.equal(nat.count(nk[:, -1], strict), ref.count(nk[:, -1], strict))
    zero = torch.zeros(n // 10, d, dtype=dtype)
    assert torch.equal(nat.count(torch.zeros(n // 10, dtype=dtype), False, zero), torch.full((n // 10,), n // 5))


@pytest.mark.parametrize("p", [math.inf, 2.0])
def test_deep_tree_agrees_with_brute_force(p):
    # 60000 points: a tree of 11 levels, built by parallel tasks, against the brute-force engine.
    x = torch.randn(60_000, 3, generator=torch.Generator().manual_seed(63), dtype=torch.float32)
    tree, brute = _backend.NativeIndex(x, p, "kdtree"), _backend.NativeIndex(x, p, "brute")
    tk, ti = tree.knn(5)
    bk, bi = brute.knn(5)
    assert torch.equal(tk, bk) and torch.equal(ti, bi)
    radius = tk[:, 2] * 1.7
    assert torch.equal(tree.count(radius, True), brute.count(radius, True))
    q = torch.randn(3000, 3, generator=torch.Generator().manual_seed(64)) * 2
    assert torch.equal(tree.knn(4, q)[1], brute.knn(4, q)[1])


def test_cuda_module_reports_devices():
    # Built wherever nvcc was found; it must import on machines without a GPU and say so.
    cuda = pytest.importorskip("infolens._native_cuda")
    assert cuda.device_count() == torch.cuda.device_count()
    assert cuda.runtime_version() >= 11000
    with pytest.raises(ValueError, match="device"):
        cuda.device_info(cuda.device_count())
    for device in range(cuda.device_count()):
        assert cuda.device_info(device)["multiprocessors"] > 0


@pytest.mark.parametrize("kind", ["gaussian", "lattice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_dimensional_max_norm_counts(kind, dtype):
    # 2-D max-norm counts take the rank sweep (rank_sweep.hpp), in slabs across threads: it must
    # agree with brute force on self-joins and outside queries, with ties on every boundary.
    g = torch.Generator().manual_seed(65)
    if kind == "gaussian":
        x = torch.randn(30_000, 2, generator=g, dtype=torch.float64).to(dtype)
    else:
        x = torch.randint(0, 40, (30_000, 2), generator=g).to(dtype) / 8
    q = x[:4000] + torch.randint(-1, 2, (4000, 2), generator=g).to(dtype) / 16
    tree, brute = _backend.NativeIndex(x, math.inf, "kdtree"), _backend.NativeIndex(x, math.inf, "brute")
    radius = tree.knn(6)[0][:, 5].contiguous()
    for strict in (True, False):
        expected = brute.count(radius, strict)
        assert torch.equal(tree.count(radius, strict), expected)
        assert torch.equal(tree.count(radius[:4000].contiguous(), strict, q), brute.count(radius[:4000].contiguous(), strict, q))
        for threads in (1, 3):
            out = np.empty(30_000, np.int64)
            tree._index.count(radius.numpy(), math.inf, strict, out, None, threads)
            assert np.array_equal(out, expected.numpy())
    zero = torch.zeros(30_000, dtype=dtype)
    assert torch.equal(tree.count(zero, True), torch.zeros(30_000, dtype=torch.int64))
    assert torch.equal(tree.count(zero, False), brute.count(zero, False))

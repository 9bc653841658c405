"""The CUDA kNN engine (src/cuda/knn/) computes the C++ engine's function (docs/NATIVE_ABI.md):
the same keys bit for bit, the same neighbour indices in (key, index) order, the same strict and
non-strict counts, and so the same estimates, on fresh random data with and without ties.

The GPU tests are marked ``gpu`` and skipped without a device (and without the CPU engine they
are compared with). The binding's argument checks run before any device access, so those tests
run wherever ``infolens._native_cuda`` imports.
"""

import math

import numpy as np
import pytest
import torch

import infolens as il
from conftest import requires_gpu
from infolens import _backend
from test_engines_agree import sample as engines_sample

cuda = pytest.importorskip("infolens._native_cuda")
if not hasattr(cuda, "knn"):
    pytest.skip("infolens._native_cuda was built without the kNN engine", allow_module_level=True)

DTYPES = [torch.float32, torch.float64]
DTYPE_NAME = {torch.float32: "float32", torch.float64: "float64"}
P = [pytest.param(math.inf, id="max"), pytest.param(2.0, id="euclidean")]
KS = (1, 3, 10, 64)
needs_cpu_engine = pytest.mark.skipif(not _backend.native_available(), reason="CPU native engine not built")


def gpu(test):
    """Runs on a CUDA device, compared with the CPU engine."""
    return pytest.mark.gpu(requires_gpu(needs_cpu_engine(test)))


def sample(kind, n, d, dtype, seed):
    """[n, d] on the CPU. gaussian / ties (a 4-value integer lattice) / scaled as in
    test_engines_agree; duplicates: rows drawn with replacement from n // 3 distinct rows;
    equal: every row the same."""
    g = torch.Generator().manual_seed(seed)
    if kind == "duplicates":
        base = torch.randn(max(n // 3, 1), d, generator=g, dtype=torch.float64)
        x = base[torch.randint(0, base.shape[0], (n,), generator=g)]
    elif kind == "equal":
        x = torch.full((n, d), 0.375, dtype=torch.float64)
    else:
        return engines_sample(kind, n, d, dtype, seed)
    return x.to(dtype).contiguous()


def ks_for(n, self_join=True):
    most = n - 1 if self_join else n
    return sorted({min(k, most) for k in KS})


def assert_same_knn(gpu_out, cpu_out, what):
    gk, gi = gpu_out
    ck, ci = cpu_out
    assert torch.equal(gk.cpu(), ck), f"keys differ: {what}"
    assert torch.equal(gi.cpu(), ci), f"indices differ: {what}"


def check_index_pair(x, p, queries=None):
    """Every k in KS, and counts at the kNN keys (strict and not), radius 0 and inf: GPU == CPU."""
    xg = x.cuda()
    qg = None if queries is None else queries.cuda()
    gpu_index = _backend.CudaIndex(xg, p)
    cpu_index = _backend.NativeIndex(x, p)
    assert gpu_index.backend == "native"
    ks = ks_for(x.shape[0], queries is None)
    # One CPU search at the largest k: the (key, index) order makes smaller k its prefix.
    ck, ci = cpu_index.knn(ks[-1], queries)
    for k in ks:
        gk, gi = gpu_index.knn(k, qg)
        assert_same_knn((gk, gi), (ck[:, :k], ci[:, :k]), f"k={k}")
    m = ck.shape[0]
    radii = {f"key{k}": ck[:, k - 1].contiguous() for k in ks}
    radii["zero"] = torch.zeros(m, dtype=x.dtype)
    radii["inf"] = torch.full((m,), math.inf, dtype=x.dtype)
    for name, radius in radii.items():
        for strict in (True, False):
            want = cpu_index.count(radius, strict, queries)
            got = gpu_index.count(radius.cuda(), strict, qg)
            assert got.device == xg.device and got.dtype == torch.int64
            assert torch.equal(got.cpu(), want), f"counts differ: radius={name}, strict={strict}"


SIZES = [2, 17, 1000, 4099]
DIMS = [1, 2, 3, 8, 17, 64]


@gpu
@pytest.mark.parametrize("kind", ["gaussian", "ties", "duplicates"])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
def test_self_join_equals_cpu(p, dtype, n, d, kind):
    check_index_pair(sample(kind, n, d, dtype, seed=97 * n + d), p)


@gpu
@pytest.mark.parametrize("m", [1, 33, 2050])
@pytest.mark.parametrize("n, d", [(17, 1), (1000, 3), (4099, 17), (1000, 64)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
def test_queries_equal_cpu(p, dtype, n, d, m):
    """Queries from the same law, some of them copies of points (key 0; nothing is excluded)."""
    x = sample("ties" if d <= 3 else "gaussian", n, d, dtype, seed=n + d)
    q = sample("ties" if d <= 3 else "gaussian", m, d, dtype, seed=n + d + 1)
    q[::3] = x[torch.arange(0, m, 3) % n]
    check_index_pair(x, p, q)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
def test_large_n_equals_cpu(p, dtype):
    x = sample("scaled", 20000, 4, dtype, seed=5)
    xg = x.cuda()
    ck, ci = _backend.NativeIndex(x, p).knn(8)
    gk, gi = _backend.CudaIndex(xg, p).knn(8)
    assert_same_knn((gk, gi), (ck, ci), "N=20000")
    radius = ck[:, 3].contiguous()
    for strict in (True, False):
        assert torch.equal(_backend.CudaIndex(xg, p).count(radius.cuda(), strict).cpu(),
                           _backend.NativeIndex(x, p).count(radius, strict))


@gpu
@pytest.mark.parametrize("n, d", [(2, 1), (65, 3), (700, 8)])
@pytest.mark.parametrize("p", P)
def test_all_points_equal(p, n, d):
    """Every key is 0: neighbours are the smallest other indices, every count is everything."""
    x = sample("equal", n, d, torch.float64, seed=0)
    check_index_pair(x, p)
    k = min(n - 1, 64)
    _, idx = _backend.CudaIndex(x.cuda(), p).knn(k)
    rows = torch.arange(n)[:, None]
    want = torch.arange(k)[None, :].expand(n, k)
    want = want + (want >= rows).long()  # skip the row itself
    assert torch.equal(idx.cpu(), want)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
@pytest.mark.parametrize("start, stop, width", [(0, 3, 8), (3, 8, 8), (5, 6, 9), (10, 27, 40)])
def test_column_blocks_read_in_place(start, stop, width, p, dtype):
    """A block of columns of a wider matrix (row stride > dim) answers as its contiguous copy,
    without being copied; queries may be blocks too."""
    wide = sample("ties" if stop - start <= 2 else "gaussian", 1500, width, dtype, seed=width).cuda()
    block = wide[:, start:stop]
    assert not block.is_contiguous() or stop - start == width
    index = _backend.CudaIndex(block, p)
    assert index.points.data_ptr() == block.data_ptr()  # no copy
    copied = _backend.CudaIndex(block.contiguous(), p)
    cpu = _backend.NativeIndex(block.cpu().contiguous(), p)
    queries = wide[::7, start:stop]  # rows and columns of a view: row stride 7 * width
    for q in (None, queries):
        qc = None if q is None else q.cpu().contiguous()
        got, same = index.knn(10, q), copied.knn(10, None if q is None else q.contiguous())
        assert_same_knn(got, (same[0].cpu(), same[1].cpu()), "view vs copy")
        assert_same_knn(got, cpu.knn(10, qc), "view vs CPU")
        radius = got[0][:, -1].contiguous()
        for strict in (True, False):
            assert torch.equal(index.count(radius, strict, q).cpu(), cpu.count(radius.cpu(), strict, qc))


@gpu
def test_non_default_stream():
    x = sample("gaussian", 3000, 5, torch.float32, seed=11)
    ck, ci = _backend.NativeIndex(x, math.inf).knn(6)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xg = x.to("cuda", non_blocking=True)
        index = _backend.CudaIndex(xg, math.inf)
        gk, gi = index.knn(6)
        counts = index.count(gk[:, -1].contiguous(), strict=True)
    stream.synchronize()
    assert_same_knn((gk, gi), (ck, ci), "side stream")
    assert torch.equal(counts.cpu(), _backend.NativeIndex(x, math.inf).count(ck[:, -1].contiguous(), True))


@gpu
@pytest.mark.parametrize("p", [math.inf, 2.0, 3.0])
def test_past_max_k_and_other_p_use_the_reference_path(p):
    """k > knn_max_k, and p outside {2, inf}, answer through ReferenceIndex on the GPU: same result."""
    x = sample("ties", 600, 3, torch.float64, seed=2)
    index = _backend.CudaIndex(x.cuda(), p)
    assert index.backend == ("native" if p in (2.0, math.inf) else "reference")
    k = cuda.knn_max_k + 6
    cpu = _backend.NativeIndex(x, p)
    ck, ci = cpu.knn(k)
    gk, gi = index.knn(k)
    assert gk.is_cuda
    if p == 3.0:  # pow() may round differently in C++ and torch
        torch.testing.assert_close(gk.cpu(), ck, rtol=1e-12, atol=0)
    else:
        assert_same_knn((gk, gi), (ck, ci), f"k={k}")
        radius = ck[:, -1].contiguous()
        assert torch.equal(index.count(radius.cuda(), False).cpu(), cpu.count(radius, False))


@gpu
def test_algorithm_on_cuda():
    x = torch.randn(50, 2, device="cuda")
    for algorithm in ("auto", "brute"):
        assert _backend.make_index(x, math.inf, "auto", algorithm).algorithm == "brute"
    assert _backend.make_index(x, math.inf, "auto", "grid").algorithm == "grid"
    with pytest.raises(ValueError, match="algorithm"):
        il.nearest_neighbours(x, 3, algorithm="kdtree")
    with pytest.raises(ValueError, match="algorithm"):
        _backend.make_index(x, math.inf, "auto", "gird")
    assert isinstance(_backend.make_index(x, 2.0, "auto"), _backend.CudaIndex)
    assert isinstance(_backend.make_index(x, 2.0, "reference"), _backend.ReferenceIndex)


# ---- estimators: CUDA tensors against CPU tensors ---------------------------------------------

def _data(dtype, seed=7, n=1500):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2))
    y = rng.standard_normal((n, 1)) + x[:, :1]
    z = rng.standard_normal((n, 2))
    lattice = rng.integers(0, 5, (n, 2)).astype(np.float64)
    labels = rng.integers(0, 3, n)
    t = {name: torch.tensor(v, dtype=dtype) for name, v in
         {"x": x, "y": y, "z": z, "lattice": lattice, "wide": rng.standard_normal((n, 12))}.items()}
    t["lat_x"], t["lat_y"] = t["lattice"][:, :1], t["lattice"][:, 1:] + t["lattice"][:, :1]
    return t, labels


ESTIMATES = {
    "entropy-max": lambda t, lab: il.entropy(t["x"]),
    "entropy-euclidean": lambda t, lab: il.entropy(t["wide"], metric="euclidean"),
    "entropy-p3": lambda t, lab: il.entropy(t["x"], metric=3),
    "entropy-k70": lambda t, lab: il.entropy(t["wide"], k=70),
    "renyi": lambda t, lab: il.renyi_entropy(t["x"], q=2),
    "ksg1": lambda t, lab: il.mutual_info(t["x"], t["y"], method="ksg1"),
    "ksg2": lambda t, lab: il.mutual_info(t["x"], t["y"], method="ksg2"),
    "ksg1-k70": lambda t, lab: il.mutual_info(t["x"], t["y"], k=70),
    "ross": lambda t, lab: il.mutual_info(t["x"], lab),
    "ross-euclidean": lambda t, lab: il.mutual_info(t["x"], lab, metric="euclidean"),
    "ross-p3": lambda t, lab: il.mutual_info(t["x"], lab, metric=3),
    "mixed": lambda t, lab: il.mutual_info(t["lat_x"], t["lat_y"], method="mixed"),
    "cmi": lambda t, lab: il.conditional_mutual_info(t["x"], t["y"], t["z"]),
    "kl": lambda t, lab: il.kl_divergence(t["x"], t["z"]),
    "kl-euclidean": lambda t, lab: il.kl_divergence(t["wide"][:700], t["wide"][700:], metric="euclidean"),
}


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(ESTIMATES))
def test_estimates_equal_cpu(name, dtype):
    t, labels = _data(dtype)
    cpu = ESTIMATES[name](t, labels)
    got = ESTIMATES[name]({k: v.cuda() for k, v in t.items()}, labels)
    assert cpu.backend == "native"
    # p = 3 runs the torch path on the GPU, whose pow() may round float32 keys differently from C++.
    other_p = name.endswith("p3")
    tol = 1e-5 if other_p and dtype == torch.float32 else 1e-12
    assert got.backend == ("reference" if other_p else "native")
    assert float(got) == pytest.approx(float(cpu), rel=tol, abs=tol)
    assert got.tie_fraction == cpu.tie_fraction
    if cpu.pointwise is not None:
        np.testing.assert_allclose(got.pointwise, cpu.pointwise, rtol=tol, atol=tol)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_mutual_info_batch_equals_cpu(dtype):
    t, labels = _data(dtype, seed=3)
    xs = [t["x"], t["z"], t["wide"][:, :5]]
    for y in (t["y"], labels):
        cpu = il.mutual_info_batch(xs, y)
        got = il.mutual_info_batch([x.cuda() for x in xs], y.cuda() if isinstance(y, torch.Tensor) else y)
        for a, b in zip(got, cpu):
            assert a.backend == b.backend == "native"
            assert float(a) == pytest.approx(float(b), rel=1e-12, abs=1e-12)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("metric, k", [("max", 4), ("euclidean", 4), ("max", 64), ("euclidean", 70), (3, 5)])
def test_nearest_neighbours_equal_cpu(metric, k, dtype):
    t, _ = _data(dtype, seed=4)
    x = t["wide"]
    queries = t["wide"][:300] + 0.25
    for q in (None, queries):
        cd, ci = il.nearest_neighbours(x, k, queries=q, metric=metric)
        gd, gi = il.nearest_neighbours(x.cuda(), k, queries=None if q is None else q.cuda(), metric=metric)
        assert gd.is_cuda and gi.is_cuda
        if metric == 3:  # the torch path on the GPU; pow() may round differently from C++
            torch.testing.assert_close(gd.cpu(), cd, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
        else:
            assert torch.equal(gd.cpu(), cd) and torch.equal(gi.cpu(), ci)


# ---- the binding's argument checks: before any device access, so no GPU needed ----------------

FAKE = 1 << 12  # an aligned, never dereferenced "device pointer"


def knn_args(**change):
    args = dict(points=FAKE, n=100, dim=3, ld=3, queries=0, m=100, ldq=3, dtype="float32", p=math.inf, k=4,
                out_keys=FAKE, out_idx=FAKE, stream=0, device=0)
    args.update(change)
    return args


def count_args(**change):
    args = dict(points=FAKE, n=100, dim=3, ld=3, queries=0, m=100, ldq=3, dtype="float64", p=2.0, radius=FAKE,
                strict=True, out=FAKE, stream=0, device=0)
    args.update(change)
    return args


BAD_KNN = [
    ({"p": 3.0}, "p"),
    ({"p": 1.0}, "p"),
    ({"k": 0}, "k"),
    ({"k": cuda.knn_max_k + 1}, "k"),
    ({"n": 10, "k": 10}, "k"),  # self-join: at most n - 1
    ({"ld": 2}, "ld"),
    ({"dim": 0, "ld": 0}, "dim"),
    ({"n": 0}, "n"),
    ({"points": 0}, "points"),
    ({"points": FAKE + 2}, "points"),  # not aligned to the element size
    ({"queries": FAKE, "m": 10, "ldq": 2}, "ldq"),
    ({"queries": FAKE, "m": 0}, "m"),
    ({"out_keys": 0}, "out_keys"),
    ({"out_idx": 0}, "out_idx"),
    ({"dtype": "float16"}, "dtype"),
]

BAD_COUNT = [
    ({"p": 3.0}, "p"),
    ({"ld": 1}, "ld"),
    ({"points": 0}, "points"),
    ({"radius": 0}, "radius"),
    ({"out": 0}, "out"),
    ({"dtype": "int64"}, "dtype"),
]


@pytest.mark.parametrize("change, name", BAD_KNN, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_KNN)])
def test_knn_argument_errors(change, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        cuda.knn(**knn_args(**change))


@pytest.mark.parametrize("change, name", BAD_COUNT, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_COUNT)])
def test_count_argument_errors(change, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        cuda.knn_count(**count_args(**change))


def test_queries_allow_k_up_to_n():
    """With explicit queries k may equal n (nothing excluded): the checks pass and only the device
    check is left to fail on a machine without one."""
    if cuda.device_count() > 0:
        pytest.skip("a device is present: valid arguments would run")
    with pytest.raises(ValueError, match="device"):
        cuda.knn(**knn_args(queries=FAKE, m=5, k=64, n=64))


def test_no_device_is_said():
    if cuda.device_count() > 0:
        pytest.skip("a device is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        cuda.knn_count(**count_args())
    assert not _backend.cuda_native("knn")


# ---- the grid path (src/cuda/knn/grid.cu): brute force's answers exactly -----------------------

def gpu_only(test):
    """Runs on a CUDA device; compares two CUDA paths (no CPU engine needed)."""
    return pytest.mark.gpu(requires_gpu(test))


GRID_KS = (1, 3, 8, 16)


def check_grid_pair(x, p, queries=None, ks=GRID_KS):
    """algorithm="grid" against "brute" on the same CUDA tensors: keys and indices equal for every
    k, counts equal (strict and not) at the k-th keys, at 0 and at inf."""
    brute = _backend.CudaIndex(x, p, "brute")
    grid = _backend.CudaIndex(x, p, "grid")
    assert grid.algorithm == "grid" and brute.algorithm == "brute"
    m = x.shape[0] if queries is None else queries.shape[0]
    most = x.shape[0] - (1 if queries is None else 0)
    radii = {"zero": torch.zeros(m, dtype=x.dtype, device=x.device),
             "inf": torch.full((m,), math.inf, dtype=x.dtype, device=x.device)}
    for k in sorted({min(k, most) for k in ks if most >= 1}):
        bk, bi = brute.knn(k, queries)
        gk, gi = grid.knn(k, queries)
        assert torch.equal(gk, bk), f"grid keys differ: k={k}"
        assert torch.equal(gi, bi), f"grid indices differ: k={k}"
        radii[f"key{k}"] = bk[:, k - 1].contiguous()
    for name, radius in radii.items():
        for strict in (True, False):
            assert torch.equal(grid.count(radius, strict, queries), brute.count(radius, strict, queries)), \
                f"grid counts differ: radius={name}, strict={strict}"


@gpu_only
@pytest.mark.parametrize("kind", ["gaussian", "ties", "duplicates"])
@pytest.mark.parametrize("d", range(1, 9))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
def test_grid_self_join_equals_brute(p, dtype, d, kind):
    check_grid_pair(sample(kind, 5000, d, dtype, seed=31 * d + len(kind)).cuda(), p)


@gpu_only
@pytest.mark.parametrize("n", [1, 2, 3, 129])
@pytest.mark.parametrize("d", [1, 2, 3, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
def test_grid_small_n_equals_brute(p, dtype, n, d):
    x = sample("ties", n, d, dtype, seed=n + 10 * d).cuda()
    check_grid_pair(x, p)
    q = sample("ties", 40, d, dtype, seed=n + 10 * d + 1).cuda()
    check_grid_pair(x, p, q)


@gpu_only
@pytest.mark.parametrize("m", [1, 33, 3000])
@pytest.mark.parametrize("d", [2, 4, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
def test_grid_queries_equal_brute(p, dtype, d, m):
    """Separate queries, some of them copies of points (key 0, nothing excluded), some far away."""
    x = sample("gaussian", 5000, d, dtype, seed=d).cuda()
    q = sample("ties", m, d, dtype, seed=d + 1).cuda() * 2 - 3
    q[::3] = x[torch.arange(0, m, 3, device=x.device) % x.shape[0]]
    check_grid_pair(x, p, q)


@gpu_only
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
def test_grid_large_n_equals_brute(p, dtype):
    """N = 2e5: many cells, dense and sparse, integer-valued coordinates (ties) in d = 4 and a
    Gaussian d = 8 sample."""
    g = torch.Generator(device="cuda").manual_seed(3)
    ties = torch.randint(0, 60, (200000, 4), generator=g, device="cuda").to(dtype)
    check_grid_pair(ties, p, ks=(8, 16))
    gauss = torch.randn(200000, 8, generator=g, device="cuda", dtype=dtype)
    check_grid_pair(gauss, p, ks=(8,))


@gpu_only
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
@pytest.mark.parametrize("start, stop, width", [(0, 4, 8), (4, 8, 8), (2, 5, 9)])
def test_grid_column_blocks(start, stop, width, p, dtype):
    """A marginal is a column block of the joint sample (ld > dim), read in place."""
    wide = sample("duplicates", 3000, width, dtype, seed=width + start).cuda()
    block = wide[:, start:stop]
    assert _backend._rows(block)[1] == width
    check_grid_pair(block, p)


@gpu_only
@pytest.mark.parametrize("p", P)
@pytest.mark.parametrize("n, d", [(2, 1), (65, 3), (700, 8)])
def test_grid_all_points_equal(p, n, d):
    check_grid_pair(sample("equal", n, d, torch.float64, seed=0).cuda(), p)


@gpu_only
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", P)
def test_grid_non_finite_coordinates(p, dtype):
    """NaN and +-inf coordinates in points and queries (the outlier bucket): brute force's answers."""
    x = sample("gaussian", 3000, 3, dtype, seed=4)
    x[::97, 0] = math.nan
    x[5::101, 1] = math.inf
    x[7::103, 2] = -math.inf
    q = sample("gaussian", 200, 3, dtype, seed=5)
    q[::7, 1] = math.nan
    q[3::11, 0] = math.inf
    check_grid_pair(x.cuda(), p)
    check_grid_pair(x.cuda(), p, q.cuda())


@gpu_only
def test_grid_falls_back_beyond_its_limits():
    """dim > 8 and k > 32 are answered by brute force through the same call."""
    x = torch.randn(2000, 12, device="cuda")
    check_grid_pair(x, math.inf, ks=(4,))
    y = torch.randn(2000, 3, device="cuda")
    check_grid_pair(y, 2.0, ks=(40,))

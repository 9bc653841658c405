"""The CUDA kernel-matrix engine (src/cuda/kernel/matmul.cu) against dense float64 references.

K_ij = prod_f k_f(X_f[i], X_f[j]) with gaussian exp(-||x - y||_2^2), laplacian exp(-||x - y||_1)
and linear x . y (bandwidths folded into the features); the engine never stores K, the reference
here builds it densely in float64 on the GPU.
"""

import pytest
import torch

cuda = pytest.importorskip("infolens._native_cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

KIND_SETS = [
    ("gaussian",),
    ("laplacian",),
    ("linear",),
    ("gaussian", "laplacian"),
    ("linear", "gaussian"),
    ("gaussian", "laplacian", "linear"),
    ("laplacian", "laplacian", "gaussian"),
]
DIM_SETS = {1: [(1,), (3,), (65,)], 2: [(1, 65), (3, 3)], 3: [(1, 3, 65), (65, 1, 3)]}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPE_NAME = {torch.float32: "float32", torch.float64: "float64"}


def make_features(kinds, dims, n, dtype, seed):
    """Features whose kernel values are of order one: typical distances and dot products ~ 1."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    features = []
    for kind, d in zip(kinds, dims):
        scale = {"gaussian": (2.0 * d) ** -0.5, "laplacian": 1.0 / d, "linear": d**-0.5}[kind]
        x = torch.randn(n, d, generator=g, device="cuda", dtype=torch.float64) * scale + 0.3 * scale
        features.append(x.to(dtype).contiguous())
    return features


def reference_kernel(kinds, features, rows=None):
    """Dense float64 K[rows, :] from the formulas (the diagonal has distance exactly 0)."""
    n = features[0].shape[0]
    rows = torch.arange(n, device="cuda") if rows is None else rows
    out = torch.ones(len(rows), n, dtype=torch.float64, device="cuda")
    for start in range(0, len(rows), 64):
        r = rows[start : start + 64]
        for kind, x in zip(kinds, features):
            x = x.to(torch.float64)
            if kind == "linear":
                k = x[r] @ x.T
            else:
                diff = x[r][:, None, :] - x[None, :, :]
                dist = (diff * diff).sum(-1) if kind == "gaussian" else diff.abs().sum(-1)
                k = torch.exp(-dist)
            out[start : start + 64] *= k
    return out


def call_matmul(kinds, features, v, stream=None, device=None):
    n, b = v.shape
    out = torch.empty(n, b, dtype=torch.float64, device="cuda")
    cuda.kernel_matmul(
        list(kinds),
        [x.data_ptr() for x in features],
        [x.shape[1] for x in features],
        n,
        DTYPE_NAME[features[0].dtype],
        v.data_ptr(),
        b,
        out.data_ptr(),
        torch.cuda.current_stream().cuda_stream if stream is None else stream,
        torch.cuda.current_device() if device is None else device,
    )
    return out


def call_sum_squares(kinds, features):
    out = torch.full((1,), float("nan"), dtype=torch.float64, device="cuda")
    cuda.kernel_sum_squares(
        list(kinds),
        [x.data_ptr() for x in features],
        [x.shape[1] for x in features],
        features[0].shape[0],
        DTYPE_NAME[features[0].dtype],
        out.data_ptr(),
        torch.cuda.current_stream().cuda_stream,
        torch.cuda.current_device(),
    )
    return out.item()


def assert_close_scaled(got, want, k, v, tol):
    # Error of each entry against the size of its sum: (|K| |V|)_ic.
    scale = k.abs() @ v.abs()
    err = (got - want).abs()
    worst = (err / (scale + 1e-300)).max().item()
    assert torch.isfinite(got).all()
    assert worst <= tol, f"relative error {worst:.3g} > {tol:g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 300, 1000])
@pytest.mark.parametrize("kinds", KIND_SETS, ids="-".join)
def test_matmul_and_sum_squares_match_dense_reference(kinds, n, dtype):
    tol = TOLERANCE[dtype]
    for case, dims in enumerate(DIM_SETS[len(kinds)]):
        features = make_features(kinds, dims, n, dtype, seed=100 * n + case)
        k = reference_kernel(kinds, features)
        if "linear" not in kinds:
            assert torch.equal(k.diagonal(), torch.ones(n, dtype=torch.float64, device="cuda"))
        for b in (1, 5, 70):
            g = torch.Generator(device="cuda").manual_seed(7 * b + n)
            v = torch.randn(n, b, generator=g, device="cuda", dtype=torch.float64)
            got = call_matmul(kinds, features, v)
            assert_close_scaled(got, k @ v, k, v, tol)
        want = (k * k).sum().item()
        got = call_sum_squares(kinds, features)
        assert abs(got - want) <= tol * want, (got, want)


def test_diagonal_is_exactly_one():
    # Duplicated far-from-origin points: K_ii = 1 exactly, whatever the rounding of the norms.
    x = (torch.randn(5, 4, device="cuda", dtype=torch.float64) + 30.0).to(torch.float32)
    for kinds in (("gaussian",), ("laplacian",), ("gaussian", "laplacian")):
        features = [x] * len(kinds)
        for i in range(5):
            v = torch.zeros(5, 1, dtype=torch.float64, device="cuda")
            v[i] = 1.0
            column = call_matmul(kinds, features, v)[:, 0]
            assert column[i].item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_n_rows_against_reference(dtype):
    # Enough rows for one segment per row block on any GPU (>= 2 blocks per SM), many point tiles,
    # n not a multiple of any tile: checked on the first and last rows.
    n, kinds, dims = 40_001, ("gaussian", "linear"), (3, 2)
    features = make_features(kinds, dims, n, dtype, seed=5)
    v = torch.randn(n, 33, generator=torch.Generator(device="cuda").manual_seed(6),
                    device="cuda", dtype=torch.float64)
    got = call_matmul(kinds, features, v)
    rows = torch.cat([torch.arange(200), torch.arange(n - 200, n)]).cuda()
    k = reference_kernel(kinds, features, rows)
    assert_close_scaled(got[rows], k @ v, k, v, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1000, 40_001])
def test_deterministic(n, dtype):
    kinds = ("gaussian", "laplacian")
    features = make_features(kinds, (5, 2), n, dtype, seed=11)
    v = torch.randn(n, 40, generator=torch.Generator(device="cuda").manual_seed(12),
                    device="cuda", dtype=torch.float64)
    first = call_matmul(kinds, features, v)
    second = call_matmul(kinds, features, v)
    assert torch.equal(first, second)
    # On another stream (ordered by hand against the current one): the same bits.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        third = call_matmul(kinds, features, v, stream=side.cuda_stream)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(first, third)
    assert call_sum_squares(kinds, features) == call_sum_squares(kinds, features)


def test_bad_arguments():
    n, b = 10, 3
    x = torch.randn(n, 2, device="cuda", dtype=torch.float32)
    v = torch.randn(n, b, device="cuda", dtype=torch.float64)
    out = torch.empty(n, b, device="cuda", dtype=torch.float64)
    stream = torch.cuda.current_stream().cuda_stream
    device = torch.cuda.current_device()
    good = dict(kinds=["gaussian"], features=[x.data_ptr()], dims=[2], n=n, dtype="float32",
                v=v.data_ptr(), b=b, out=out.data_ptr(), stream=stream, device=device)
    cases = [
        (dict(kinds=[], features=[], dims=[]), "kinds"),
        (dict(kinds=["cosine"]), "kinds"),
        (dict(kinds=["gaussian"] * 17, features=[x.data_ptr()] * 17, dims=[2] * 17), "kinds"),
        (dict(features=[x.data_ptr(), x.data_ptr()]), "features"),
        (dict(dims=[2, 2]), "dims"),
        (dict(dims=[0]), "dims"),
        (dict(n=0), "n"),
        (dict(b=0), "b"),
        (dict(dtype="float16"), "dtype"),
        (dict(features=[0]), "features"),
        (dict(features=[x.data_ptr() + 2]), "features"),
        (dict(v=0), "v"),
        (dict(out=0), "out"),
        (dict(device=torch.cuda.device_count()), "device"),
        (dict(device=-1), "device"),
    ]
    for change, name in cases:
        with pytest.raises(ValueError, match=f"^{name}:"):
            cuda.kernel_matmul(**{**good, **change})
    torch.cuda.synchronize()  # nothing was launched on bad arguments; the context is fine

    sq = torch.empty(1, device="cuda", dtype=torch.float64)
    good_sq = {k: good[k] for k in ("kinds", "features", "dims", "n", "dtype", "stream", "device")}
    good_sq["out"] = sq.data_ptr()
    for change, name in [
        (dict(kinds=[], features=[], dims=[]), "kinds"),
        (dict(kinds=["rbf"]), "kinds"),
        (dict(dims=[]), "dims"),
        (dict(n=-1), "n"),
        (dict(dtype="int32"), "dtype"),
        (dict(out=0), "out"),
        (dict(features=[0]), "features"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}:"):
            cuda.kernel_sum_squares(**{**good_sq, **change})


def test_out_of_memory_error_class():
    assert issubclass(cuda.CudaOutOfMemory, cuda.CudaError)
    assert issubclass(cuda.CudaOutOfMemory, MemoryError)

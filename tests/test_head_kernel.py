"""The fused softmax cross-entropy head curvature product (src/cpp/curvature/) against the torch
reference (infolens/reference/head.py) and an independent dense check: the GGN-vector product
J^T H J v of loss(h, W, c) = sum_t w_t CE(h_t W^T + c, y_t), built with torch.func."""

import numpy as np
import pytest
import torch
from torch.func import grad, jvp, vjp

from infolens import _backend
from infolens.reference.head import softmax_ce_ggn as reference

pytestmark = pytest.mark.skipif(not _backend.native_available(), reason="native engine not built")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The dense checks are many tiny torch ops: one thread runs them fastest (and on a busy CI
    machine, torch's team waiting for a descheduled thread would dominate this file's time)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

OUTPUTS = ("out_dh", "out_dw", "out_dbias")
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def native():
    from infolens import _native

    return _native


def make_inputs(T, V, d, b, dtype, seed, bias=True, tangents=(True, True, True), logit_scale=3.0):
    """Random head inputs whose logits have standard deviation about logit_scale."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    return dict(
        h=randn(T, d),
        w=randn(V, d, scale=logit_scale / d**0.5),
        bias=randn(V) if bias else None,
        token_weights=(torch.rand(T, generator=g, dtype=torch.float64) / T).to(dtype),
        dh=randn(b, T, d) if tangents[0] else None,
        dw=randn(b, V, d, scale=d**-0.5) if tangents[1] else None,
        dbias=randn(b, V) if tangents[2] else None,
    )


def vectors(x):
    return next(x[k].shape[0] for k in ("dh", "dw", "dbias") if x[k] is not None)


def call_native(x, outputs=OUTPUTS, threads=0):
    """The native engine's outputs (None where not asked for)."""
    (T, d), V, b, dtype = x["h"].shape, x["w"].shape[0], vectors(x), x["h"].dtype
    shapes = {"out_dh": (b, T, d), "out_dw": (b, V, d), "out_dbias": (b, V)}
    outs = {k: torch.full(shapes[k], float("nan"), dtype=dtype) if k in outputs else None for k in OUTPUTS}
    arrays = {k: None if v is None else v.numpy() for k, v in {**x, **outs}.items()}
    native().softmax_ce_ggn(**arrays, threads=threads)
    return [outs[k] for k in OUTPUTS]


def dense_ggn(x):
    """J^T H J v for each vector, in float64 with torch.func: independent of both engines."""
    d64 = {k: None if v is None else v.to(torch.float64) for k, v in x.items()}
    h, w, tw = d64["h"], d64["w"], d64["token_weights"]
    c = d64["bias"] if d64["bias"] is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    labels = torch.arange(h.shape[0]) % w.shape[0]  # the logit Hessian does not depend on them

    def logits(h, w, c):
        return h @ w.T + c

    def loss(z):
        return (tw * torch.nn.functional.cross_entropy(z, labels, reduction="none")).sum()

    z, pullback = vjp(logits, h, w, c)
    outs = [[], [], []]
    for j in range(vectors(x)):
        tangent = tuple(torch.zeros_like(p) if d64[k] is None else d64[k][j]
                        for p, k in ((h, "dh"), (w, "dw"), (c, "dbias")))
        jv = jvp(logits, (h, w, c), tangent)[1]
        hjv = jvp(grad(loss), (z,), (jv,))[1]
        for out, part in zip(outs, pullback(hjv)):
            out.append(part)
    return [torch.stack(o) for o in outs]


def assert_close(got, want, tol, what):
    scale = max(float(want.abs().max()), 1e-300)
    err = float((got.to(torch.float64) - want.to(torch.float64)).abs().max())
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.1g} x {scale:.3g}"


SHAPES = [  # T, V, d, b: V across strip (64) and micro-tile (8) edges, T across token blocks (256)
    (1, 1, 1, 1),
    (1, 9, 5, 3),
    (5, 7, 3, 2),
    (33, 130, 17, 1),
    (70, 65, 64, 2),
    (300, 200, 33, 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_equals_reference_and_dense_ggn(shape, dtype):
    x = make_inputs(*shape, dtype, seed=sum(shape))
    truth = dense_ggn(x)
    ref = reference(**x)
    got = call_native(x)
    for name, g, r, t in zip(OUTPUTS, got, ref, truth):
        assert g.dtype == dtype and torch.isfinite(g).all()
        assert_close(g, t, TOL[dtype], f"native {name}")
        assert_close(r, t, TOL[dtype], f"reference {name}")


TANGENT_SETS = [(True, False, False), (False, True, False), (False, False, True), (True, True, False),
                (False, True, True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tangents", TANGENT_SETS)
@pytest.mark.parametrize("bias", [True, False])
def test_absent_tangents_and_bias_are_zero(tangents, bias, dtype):
    x = make_inputs(40, 75, 21, 3, dtype, seed=7, bias=bias, tangents=tangents)
    truth = dense_ggn(x)
    for name, g, t in zip(OUTPUTS, call_native(x), truth):
        assert_close(g, t, TOL[dtype], name)


def check_each_output_alone(call, x, outputs):
    """Asking for some outputs gives exactly those, equal to the same outputs asked for together."""
    together = dict(zip(OUTPUTS, call(x)))
    alone = dict(zip(OUTPUTS, call(x, outputs)))
    for name in OUTPUTS:
        if name in outputs:
            assert torch.equal(alone[name], together[name])
        else:
            assert alone[name] is None


@pytest.mark.parametrize("outputs", [("out_dh",), ("out_dw",), ("out_dbias",), ("out_dw", "out_dbias")])
def test_each_output_alone_equals_all_together(outputs):
    check_each_output_alone(call_native, make_inputs(50, 90, 19, 2, torch.float64, seed=3), outputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_logits_do_not_overflow(dtype):
    """Logits near 1e3 (exp(z) alone overflows in either dtype), with a well-conditioned softmax."""
    x = make_inputs(40, 100, 16, 2, dtype, seed=11)
    x["bias"] = x["bias"] + 1000
    truth = dense_ggn(x)
    for name, g, t in zip(OUTPUTS, call_native(x), truth):
        assert torch.isfinite(g).all()
        # float32 logits near 1e3 carry absolute rounding ~1e-4, which moves p by as much
        assert_close(g, t, 2e-4 if dtype == torch.float32 else 1e-12, name)


def test_widely_spread_logits_in_float64():
    """|z| ~ 1e3 spread over the vocabulary: p is one-hot to within exp(-tens) and u tiny; float64
    gets it to rounding (float32 cannot: dz - p.dz cancels to below its spacing)."""
    x = make_inputs(40, 100, 16, 2, torch.float64, seed=11, logit_scale=1e3)
    truth = dense_ggn(x)
    for name, g, t in zip(OUTPUTS, call_native(x), truth):
        assert torch.isfinite(g).all()
        assert_close(g, t, 1e-9, name)
    single = {k: None if v is None else v.float() for k, v in x.items()}
    assert all(torch.isfinite(g).all() for g in call_native(single))


def test_float32_sums_keep_accuracy_over_many_tokens():
    """out_dw (compensated) and out_dbias (float64) sum over 6 token blocks without drift."""
    x = make_inputs(1500, 40, 8, 1, torch.float32, seed=5)
    x["token_weights"] = torch.ones(1500)
    truth = reference(**{k: None if v is None else v.double() for k, v in x.items()})
    _, out_dw, out_dbias = call_native(x)
    assert_close(out_dw, truth[1], 2e-6, "out_dw")
    assert_close(out_dbias, truth[2], 2e-6, "out_dbias")


def test_results_do_not_depend_on_thread_count():
    x = make_inputs(300, 700, 40, 3, torch.float32, seed=2)
    first = call_native(x, threads=1)
    for threads in (2, 3, 5):
        for a, b in zip(first, call_native(x, threads=threads)):
            assert torch.equal(a, b)


# ---- bad arguments -------------------------------------------------------------------------------


def good_arrays(dtype=np.float32):
    T, V, d, b = 4, 6, 3, 2
    rng = np.random.default_rng(0)
    return dict(h=rng.standard_normal((T, d)).astype(dtype), w=rng.standard_normal((V, d)).astype(dtype),
                bias=np.zeros(V, dtype), token_weights=np.ones(T, dtype),
                dh=rng.standard_normal((b, T, d)).astype(dtype), dw=rng.standard_normal((b, V, d)).astype(dtype),
                dbias=np.zeros((b, V), dtype), out_dh=np.empty((b, T, d), dtype),
                out_dw=np.empty((b, V, d), dtype), out_dbias=np.empty((b, V), dtype))


def test_good_arrays_pass():
    native().softmax_ce_ggn(**good_arrays())
    native().softmax_ce_ggn(**good_arrays(np.float64), threads=2)


def readonly(a):
    a.flags.writeable = False
    return a


BAD = [
    ("h", lambda a: a["h"].astype(np.int64), "h must have dtype"),
    ("w", lambda a: a["w"].astype(np.float64), "w must have dtype float32"),
    ("w", lambda a: a["w"][:, :2].copy(), "w must have shape"),
    ("w", lambda a: np.asfortranarray(np.ones((6, 3), np.float32)), "w must be C-contiguous"),
    ("bias", lambda a: a["bias"][:5].copy(), "bias must have shape"),
    ("token_weights", lambda a: a["token_weights"][None], "token_weights must have shape"),
    ("dh", lambda a: a["dh"][:, :3].copy(), "dh must have shape"),
    ("dw", lambda a: a["dw"][:1].copy(), "dw must have shape"),
    ("dbias", lambda a: a["dbias"].astype(np.float64), "dbias must have dtype"),
    ("out_dh", lambda a: readonly(a["out_dh"]), "out_dh must be writeable"),
    ("out_dw", lambda a: a["out_dw"][:, :, ::2], "out_dw must"),
    ("out_dbias", lambda a: np.empty((2, 7), np.float32), "out_dbias must have shape"),
    ("out_dh", lambda a: a["dh"], "out_dh must not share memory with dh"),
    ("out_dbias", lambda a: a["out_dw"].reshape(-1)[:12].reshape(2, 6), "out_dbias must not share memory with out_dw"),
]


@pytest.mark.parametrize("name, change, message", BAD)
def test_bad_arrays_raise_value_error_naming_the_argument(name, change, message):
    arrays = good_arrays()
    arrays[name] = change(arrays)
    with pytest.raises(ValueError, match=message):
        native().softmax_ce_ggn(**arrays)


@pytest.mark.parametrize("drop, message", [
    (("dh", "dw", "dbias"), "at least one of dh, dw, dbias"),
    (("out_dh", "out_dw", "out_dbias"), "at least one of out_dh, out_dw, out_dbias"),
])
def test_missing_tangents_or_outputs(drop, message):
    arrays = good_arrays()
    for k in drop:
        arrays[k] = None
    with pytest.raises(ValueError, match=message):
        native().softmax_ce_ggn(**arrays)


@pytest.mark.parametrize("sizes, message", [
    ((0, 6, 3, 2), "T >= 1"), ((4, 0, 3, 2), "V >= 1"), ((4, 6, 0, 2), "d >= 1"), ((4, 6, 3, 0), "b >= 1"),
])
def test_empty_sizes(sizes, message):
    T, V, d, b = sizes
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    with pytest.raises(ValueError, match=message):
        native().softmax_ce_ggn(z(T, d), z(V, d), None, z(T), dh=z(b, T, d), out_dw=z(b, V, d))


def test_other_misuse():
    arrays = good_arrays()
    with pytest.raises(TypeError, match="dh must be a numpy array or None"):
        native().softmax_ce_ggn(**{**arrays, "dh": [[1.0]]})
    with pytest.raises(ValueError, match="threads"):
        native().softmax_ce_ggn(**arrays, threads=-1)

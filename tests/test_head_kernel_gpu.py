"""The CUDA softmax cross-entropy head curvature product (src/cuda/curvature/) against the dense
torch.func GGN product, the torch reference and the CPU engine (see test_head_kernel.py)."""

import pytest
import torch

from test_head_kernel import OUTPUTS, assert_close, check_each_output_alone, dense_ggn, make_inputs, vectors
from infolens.reference.head import softmax_ce_ggn as reference

cuda = pytest.importorskip("infolens._native_cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

DTYPE_NAME = {torch.float32: "float32", torch.float64: "float64"}
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def on_gpu(x):
    return {k: None if v is None else v.cuda() for k, v in x.items()}


def call_cuda(x, outputs=OUTPUTS, stream=None):
    """The CUDA engine's outputs for inputs x on the GPU (None where not asked for)."""
    (T, d), V, b, dtype = x["h"].shape, x["w"].shape[0], vectors(x), x["h"].dtype
    shapes = {"out_dh": (b, T, d), "out_dw": (b, V, d), "out_dbias": (b, V)}
    outs = {k: torch.full(shapes[k], float("nan"), dtype=dtype, device="cuda") if k in outputs else None
            for k in OUTPUTS}
    ptr = {k: None if v is None else v.data_ptr() for k, v in {**x, **outs}.items()}
    stream = torch.cuda.current_stream() if stream is None else stream
    cuda.softmax_ce_ggn(**ptr, T=T, V=V, d=d, b=b, dtype=DTYPE_NAME[dtype], stream=stream.cuda_stream,
                        device=torch.cuda.current_device())
    stream.synchronize()
    return [outs[k] for k in OUTPUTS]


SHAPES = [(1, 1, 1, 1), (5, 7, 3, 2), (33, 130, 17, 1), (300, 1100, 65, 2), (600, 200, 130, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_equals_dense_ggn_and_reference(shape, dtype):
    x = make_inputs(*shape, dtype, seed=sum(shape))
    truth = dense_ggn(x)
    ref = reference(**on_gpu(x))
    for name, g, r, t in zip(OUTPUTS, call_cuda(on_gpu(x)), ref, truth):
        assert g.dtype == dtype and torch.isfinite(g).all()
        assert_close(g.cpu(), t, TOL[dtype], f"cuda {name}")
        assert_close(r.cpu(), t, TOL[dtype], f"reference on cuda {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tangents", [(True, False, False), (False, True, False), (False, False, True),
                                      (False, True, True)])
@pytest.mark.parametrize("bias", [True, False])
def test_absent_tangents_and_bias(tangents, bias, dtype):
    x = make_inputs(40, 75, 21, 3, dtype, seed=7, bias=bias, tangents=tangents)
    for name, g, t in zip(OUTPUTS, call_cuda(on_gpu(x)), dense_ggn(x)):
        assert_close(g.cpu(), t, TOL[dtype], name)


@pytest.mark.parametrize("outputs", [("out_dh",), ("out_dw",), ("out_dbias",)])
def test_each_output_alone(outputs):
    check_each_output_alone(call_cuda, on_gpu(make_inputs(50, 600, 19, 2, torch.float64, seed=3)), outputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_logits(dtype):
    x = make_inputs(40, 100, 16, 2, dtype, seed=11)
    x["bias"] = x["bias"] + 1000
    for name, g, t in zip(OUTPUTS, call_cuda(on_gpu(x)), dense_ggn(x)):
        assert torch.isfinite(g).all()
        assert_close(g.cpu(), t, 2e-4 if dtype == torch.float32 else 1e-12, name)
    spread = make_inputs(40, 100, 16, 2, torch.float64, seed=11, logit_scale=1e3)
    for name, g, t in zip(OUTPUTS, call_cuda(on_gpu(spread)), dense_ggn(spread)):
        assert_close(g.cpu(), t, 1e-9, name)


def test_agrees_with_cpu_engine_and_float64_at_vocabulary_scale():
    """T = 700, V = 32000: several token blocks and vocabulary splits, float32."""
    from test_head_kernel import call_native

    x = make_inputs(700, 32000, 64, 2, torch.float32, seed=1)
    truth = reference(**{k: v.double().cuda() for k, v in x.items()})
    cpu = call_native(x)
    for name, g, c, t in zip(OUTPUTS, call_cuda(on_gpu(x)), cpu, truth):
        assert_close(g.cpu(), t.cpu(), TOL[torch.float32], f"cuda {name}")
        assert_close(g.cpu(), c, TOL[torch.float32], f"cuda vs cpu {name}")


def test_deterministic_and_on_the_callers_stream():
    x = on_gpu(make_inputs(300, 5000, 40, 3, torch.float32, seed=2))
    first = call_cuda(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        again = call_cuda(x, stream=side)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


# ---- bad arguments -------------------------------------------------------------------------------


def good_pointers():
    x = on_gpu(make_inputs(4, 6, 3, 2, torch.float32, seed=0))
    outs = {"out_dh": torch.empty(2, 4, 3, device="cuda"), "out_dw": torch.empty(2, 6, 3, device="cuda"),
            "out_dbias": torch.empty(2, 6, device="cuda")}
    keep = {**x, **outs}
    args = {k: v.data_ptr() for k, v in keep.items()}
    args.update(T=4, V=6, d=3, b=2, dtype="float32", stream=torch.cuda.current_stream().cuda_stream,
                device=torch.cuda.current_device())
    return args, keep


def test_good_pointers_pass():
    args, keep = good_pointers()
    cuda.softmax_ce_ggn(**args)
    torch.cuda.synchronize()


@pytest.mark.parametrize("change, message", [
    (dict(T=0), "T: must be in"), (dict(V=0), "V: must be in"), (dict(d=0), "d: must be in"),
    (dict(b=0), "b: must be in"), (dict(dtype="float16"), "dtype"), (dict(device=99), "device"),
    (dict(h=0), "h: null device pointer"), (dict(dw=2), "dw: device pointer not aligned"),
    (dict(dh=None, dw=None, dbias=None), "at least one of dh, dw, dbias"),
    (dict(out_dh=None, out_dw=None, out_dbias=None), "at least one of out_dh, out_dw, out_dbias"),
    ("out_dh=dh", "out_dh must not share memory with dh"),
])
def test_bad_arguments_raise_value_error(change, message):
    args, keep = good_pointers()
    if change == "out_dh=dh":
        change = dict(out_dh=args["dh"])
    args.update(change)
    with pytest.raises(ValueError, match=message):
        cuda.softmax_ce_ggn(**args)


def test_out_of_memory_is_a_memory_error():
    """A float64 accumulator for b V d = 2^40 entries cannot exist. Every workspace is allocated
    before anything is launched, so these pointers (far apart, never dereferenced) are safe."""
    args, keep = good_pointers()
    names = ["h", "w", "bias", "token_weights", "dh", "dw", "dbias", "out_dh", "out_dw", "out_dbias"]
    args.update({name: (i + 1) << 44 for i, name in enumerate(names)})
    args.update(V=1 << 20, d=1 << 10, b=1 << 10)
    with pytest.raises(MemoryError):
        cuda.softmax_ce_ggn(**args)
    test_good_pointers_pass()  # the device is still usable

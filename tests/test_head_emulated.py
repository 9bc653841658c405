"""The head's CUDA engine (src/cuda/curvature/: gemm.cuh's tensor-core products and the GGN
product of softmax_ce_ggn.cu) run on the CPU, where no GPU is: compiled by g++ against the CUDA
stand-in of tests/emulated_cuda/ (threads as fibers, the tensor-core product and asynchronous
copies with the instructions' semantics) and compared with float64 loops written from the
contract (tests/emulated_cuda/head_check.cpp). test_head_kernel_gpu.py holds the same code to
the CPU engine on a real device; this one runs everywhere, in CI too."""

import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "emulated_cuda"))
import emulation  # noqa: E402

pytestmark = pytest.mark.skipif(not emulation.AVAILABLE, reason=emulation.REASON)


@pytest.fixture(scope="module")
def head_check(tmp_path_factory):
    return emulation.build(tmp_path_factory.mktemp("emulated_head"), ["curvature/softmax_ce_ggn.cu"], "head_check.cpp")


def _run(head_check, *args):
    seed = random.randrange(1 << 31)
    out, status = emulation.run(head_check, seed, *args)
    assert status == 0, f"seed {seed}:\n{out[-4000:]}"
    cases, failed = map(int, re.search(r"(\d+) cases, (\d+) failed", out).groups())
    return cases, failed


def test_the_tiled_products_agree_with_float64_loops(head_check):
    # every layout of both operands, each epilogue, both dtypes, ragged sizes, one or two operand
    # pairs, operands that allow 16-byte copies and operands that do not (NaN around each)
    done, failed = _run(head_check, "gemm", 3)
    assert failed == 0 and done == 48


def test_the_ggn_product_agrees_with_float64_loops(head_check):
    # several token blocks, vocabulary segments and splits of out_dh; tangents and outputs
    # present or absent, with and without a bias, token weights of 0 among them
    done, failed = _run(head_check, "engine", 2)
    assert failed == 0 and done >= 12

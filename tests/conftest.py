import numpy as np
import pytest
import torch

import infolens
from infolens import _backend

# Every estimator runs on each engine this install has; the reference path always exists.
ENGINES = ["native", "reference"] if _backend.native_available() else ["reference"]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture
def fast_engine():
    """The engine for large-N accuracy tests: native where built (the reference is O(N^2))."""
    return ENGINES[0]


def gaussian_pair(n, rho, seed, dims=1):
    """n samples of (x, y), each `dims`-D, coordinate c of x and y correlated by rho."""
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, rho], [rho, 1.0]])
    pairs = rng.multivariate_normal([0.0, 0.0], cov, size=(n, dims))
    return pairs[..., 0], pairs[..., 1]


def gpu_available():
    return torch.cuda.is_available()


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype for one test (closed forms are checked in float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)

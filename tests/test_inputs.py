"""Bad input gets a clear error naming the argument: never a crash, a hang or a silent number."""

import numpy as np
import pytest
import torch

import infolens as il

rng = np.random.default_rng(40)
X = rng.standard_normal((50, 2))
Y = rng.standard_normal(50)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: il.entropy(np.array([1.0, np.nan, 2.0, 3.0, 4.0])), ValueError, "x contains 1 NaN"),
        (lambda: il.entropy(np.array([1.0, np.inf, 2.0, 3.0, 4.0])), ValueError, "x contains 1 NaN or infinite"),
        (lambda: il.entropy(np.ones((2, 2, 2))), ValueError, "x must be 1-D"),
        (lambda: il.entropy(np.array(3.0)), ValueError, "x must be 1-D"),
        (lambda: il.entropy(np.zeros((0, 3))), ValueError, "x is empty"),
        (lambda: il.entropy(np.array(["a", "b", "c", "d"])), TypeError, "x must hold real numbers"),
        (lambda: il.entropy(np.array([1 + 1j] * 5)), TypeError, "x must hold real numbers"),
        (lambda: il.entropy([[1.0, 2.0], [3.0]]), TypeError, "x must be an array"),
        (lambda: il.entropy(np.arange(3.0), k=3), ValueError, "k=3 needs at least 4 samples in x"),
        (lambda: il.entropy(X, k=0), ValueError, "k must be a positive integer"),
        (lambda: il.entropy(X, k=2.5), ValueError, "k must be a positive integer"),
        (lambda: il.entropy(X, metric="cosine"), ValueError, "metric must be"),
        (lambda: il.entropy(X, metric=0.5), ValueError, "metric must be"),
        (lambda: il.entropy(X, base=1), ValueError, "base must be"),
        (lambda: il.entropy(X, backend="gpu"), ValueError, "backend must be one of"),
        (lambda: il.entropy(X, jitter=-1.0), ValueError, "jitter must be"),
        (lambda: il.renyi_entropy(X, q=1.0), ValueError, "q must satisfy"),
        (lambda: il.renyi_entropy(X, q=5.0, k=3), ValueError, "q must satisfy"),
        (lambda: il.mutual_info(X, Y[:40]), ValueError, "x and y must have the same number of samples"),
        (lambda: il.mutual_info(X, Y, method="ksg3"), ValueError, "method must be one of"),
        (lambda: il.mutual_info(X, np.r_[np.zeros(49, int), 1]), ValueError, "y: Ross's estimator needs at least"),
        (lambda: il.mutual_info(X, np.zeros((50, 2), int), method="ross"), ValueError, "y must be a 1-D array of labels"),
        (lambda: il.mutual_info(X, np.r_[np.zeros(49), np.nan], method="ross"), ValueError, "y contains NaN"),
        (lambda: il.mutual_info(X, np.full(50, np.nan)), ValueError, "y contains 50 NaN"),
        (lambda: il.mutual_info_batch([], Y), ValueError, "xs must hold at least one array"),
        (lambda: il.mutual_info_batch([X, X[:10]], Y), ValueError, "k=3 needs at least 4 samples in xs|same number"),
        (lambda: il.conditional_mutual_info(X, Y, Y[:10]), ValueError, "x and z must have the same number"),
        (lambda: il.kl_divergence(X, Y), ValueError, "same number of features"),
        (lambda: il.kl_divergence(X, X[:2]), ValueError, "k=3 needs at least 3 samples in q_samples"),
        (lambda: il.kl_divergence(X, np.repeat(X[:1], 10, axis=0)), ValueError, "q_samples"),
    ],
)
def test_bad_input(call, error, match, engine, monkeypatch):
    monkeypatch.setenv("INFOLENS_BACKEND", engine)
    with pytest.raises(error, match=match):
        call()


def test_environment_backend_is_checked(monkeypatch):
    monkeypatch.setenv("INFOLENS_BACKEND", "fastest")
    with pytest.raises(ValueError, match="INFOLENS_BACKEND must be one of"):
        il.entropy(X)


def test_small_but_valid_inputs(engine):
    # The smallest sample counts each estimator accepts give finite numbers.
    tiny = np.array([0.1, 0.5, 0.9, 1.7])
    assert np.isfinite(il.entropy(tiny, k=3, backend=engine))
    assert np.isfinite(il.mutual_info(tiny, tiny[::-1] ** 2, k=3, backend=engine))
    assert np.isfinite(il.mutual_info(np.arange(4.0), [0, 0, 1, 1], k=1, backend=engine))
    assert np.isfinite(il.kl_divergence(tiny, tiny + 0.3, k=3, backend=engine))


def test_labels_of_any_kind(engine):
    x = np.r_[rng.standard_normal(30), rng.standard_normal(30) + 3]
    words = np.array(["cat"] * 30 + ["dog"] * 30)
    ints = np.r_[np.zeros(30, int), np.ones(30, int)]
    a = il.mutual_info(x, ints, backend=engine)
    assert float(a) == float(il.mutual_info(x, torch.tensor(ints), backend=engine))
    assert float(a) == float(il.mutual_info(x, ints.astype(bool), backend=engine))
    with pytest.raises(TypeError, match="y must hold real numbers"):
        il.mutual_info(x, words)

"""``infolens bench``: the native engine against the torch reference and the peers that are installed.

Times a few estimates side by side on the same Gaussian data, in this process, and prints one
table: seconds for each engine, the ratio to infolens's native engine, and how far each answer is
from infolens's. Peers are used only when importable (scikit-learn's ``mutual_info_regression``,
scipy's ``cKDTree``); nothing is installed. The reference path is brute force, so ``--n`` stays
modest (20,000 by default; the bench/ scripts measure at 1e6).
"""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np

from .. import entropy, mutual_info
from ..knn._common import log_unit_ball


def _timed(fn):
    start = time.perf_counter()
    value = float(fn())
    return time.perf_counter() - start, value


def _sklearn_ksg(x, y, k):
    from sklearn.feature_selection import mutual_info_regression
    return mutual_info_regression(x[:, None], y, n_neighbors=k, random_state=0)[0]


def _scipy_entropy(x, k):
    """Kozachenko-Leonenko (max-norm) from cKDTree's kNN distances: the same formula as infolens."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma
    n, d = x.shape
    dist, _ = cKDTree(x).query(x, k=k + 1, p=np.inf, workers=-1)
    return digamma(n) - digamma(k) + log_unit_ball(d, math.inf) + d * np.log(dist[:, k]).mean()


def cases(n: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    y = 0.6 * x + 0.8 * rng.standard_normal((n, 4))
    have = {name: importlib.util.find_spec(name) is not None for name in ("sklearn", "scipy")}
    yield ("KSG-1 MI, 1-D x 1-D", lambda b: mutual_info(x[:, 0], y[:, 0], k=k, backend=b),
           {"scikit-learn": lambda: _sklearn_ksg(x[:, 0], y[:, 0], k)} if have["sklearn"] else {})
    yield ("KSG-1 MI, 2-D x 2-D", lambda b: mutual_info(x[:, :2], y[:, :2], k=k, backend=b), {})
    yield ("KL entropy, 4-D, max-norm", lambda b: entropy(x, k=k, backend=b),
           {"scipy cKDTree": lambda: _scipy_entropy(x, k)} if have["scipy"] else {})


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="time the native engine against the reference path and installed peers",
                              description=__doc__)
    p.add_argument("--n", type=int, default=20_000, help="samples (default 20000)")
    p.add_argument("-k", type=int, default=3, help="neighbours (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import native_available
    from . import UsageError
    if args.n < 2 * (args.k + 1):
        raise UsageError(f"--n must be at least {2 * (args.k + 1)} for k = {args.k}, got {args.n}")
    engines = ["native", "reference"] if native_available() else ["reference"]
    print(f"infolens bench: N = {args.n}, k = {args.k}; ratio = seconds / native seconds", flush=True)
    print(f"{'estimate':<28} {'engine':<14} {'seconds':>9} {'ratio':>8} {'|difference|':>13}")
    for name, estimate, peers in cases(args.n, args.k, args.seed):
        base_time, base_value = _timed(lambda: estimate(engines[0]))
        rows = [(engines[0], base_time, base_value)]
        rows += [(engine, *_timed(lambda: estimate(engine))) for engine in engines[1:]]
        rows += [(peer, *_timed(fn)) for peer, fn in peers.items()]
        for engine, seconds, value in rows:
            print(f"{name:<28} {engine:<14} {seconds:>9.3f} {seconds / base_time:>7.1f}x "
                  f"{abs(value - base_value):>13.1e}", flush=True)
    return 0

"""infolens's kNN estimators against what users run instead, side by side in one process.

    python bench/knn_vs_peers.py            # the sizes of issue 2 (about 15 minutes on 2 cores)
    python bench/knn_vs_peers.py --quick    # every case at 1/10 of the size, to check the script

Peers get every core they can use (scipy ``workers=-1``, faiss's OpenMP team); scikit-learn's
``mutual_info_regression`` has no thread option for one feature. Each row times one full
estimate, index builds included, and checks that both sides give the same answer.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

import infolens as il
from _harness import Report, timed

K = 3


def correlated(n, dims, rng):
    x = rng.standard_normal((n, dims))
    return x, 0.6 * x + 0.8 * rng.standard_normal((n, dims))


def ksg_1d_vs_sklearn(n, rng):
    from sklearn.feature_selection import mutual_info_regression

    x, y = correlated(n, 1, rng)
    # sklearn scales each variable to unit variance before searching; give infolens the same data.
    x, y = x / x.std(), y / y.std()
    t_peer, peer = timed(lambda: mutual_info_regression(x, y[:, 0], n_neighbors=K, random_state=0)[0])
    t_ours, ours = timed(lambda: float(il.mutual_info(x, y, k=K)))
    return "KSG-1, 1-D x 1-D", n, "sklearn mutual_info_regression", t_peer, t_ours, abs(peer - ours)


def ksg_scipy(x, y):
    """KSG-1 as users write it with scipy: joint max-norm kNN, then strict marginal counts."""
    n = len(x)
    eps = cKDTree(np.hstack([x, y])).query(np.hstack([x, y]), k=K + 1, p=np.inf, workers=-1)[0][:, -1]
    r = np.nextafter(eps, 0)  # query_ball_point counts <= r; KSG-1 counts < eps
    nx = cKDTree(x).query_ball_point(x, r, p=np.inf, return_length=True, workers=-1) - 1
    ny = cKDTree(y).query_ball_point(y, r, p=np.inf, return_length=True, workers=-1) - 1
    return digamma(K) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1))


def ksg_2d_vs_scipy(n, rng):
    x, y = correlated(n, 2, rng)
    t_peer, peer = timed(lambda: ksg_scipy(x, y))
    t_ours, ours = timed(lambda: float(il.mutual_info(x, y, k=K)))
    return "KSG-1, 2-D x 2-D", n, "scipy cKDTree kNN + query_ball_point", t_peer, t_ours, abs(peer - ours)


def kl_entropy_scipy(x):
    n, d = x.shape
    eps = cKDTree(x).query(x, k=K + 1, p=np.inf, workers=-1)[0][:, -1]
    return digamma(n) - digamma(K) + d * math.log(2) + d * np.mean(np.log(eps))


def entropy_16d_vs_scipy(n, rng):
    x = rng.standard_normal((n, 16))
    t_peer, peer = timed(lambda: kl_entropy_scipy(x))
    t_ours, ours = timed(lambda: float(il.entropy(x, k=K)))
    return "KL entropy, max-norm, d=16", n, "scipy cKDTree query", t_peer, t_ours, abs(peer - ours)


def euclidean_64d_vs_faiss(n, rng):
    import faiss

    faiss.omp_set_num_threads(os.cpu_count())
    x = rng.standard_normal((n, 64)).astype(np.float32)

    def peer():
        index = faiss.IndexFlatL2(64)
        index.add(x)
        return index.search(x, K + 1)[1][:, 1:]  # each point finds itself first

    t_peer, idx_peer = timed(peer)
    t_ours, (_, idx_ours) = timed(lambda: il.nearest_neighbours(x, K, metric="euclidean"))
    # faiss ranks by |x|^2 + |y|^2 - 2 x.y in float32, so near-ties may order differently.
    mismatch = float(np.mean(idx_peer != idx_ours.numpy()))
    return "Euclidean kNN, d=64, float32", n, "faiss-cpu IndexFlatL2", t_peer, t_ours, mismatch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every case at 1/10 of its size")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    rng = np.random.default_rng(0)
    cases = [(ksg_1d_vs_sklearn, 1_000_000), (ksg_2d_vs_scipy, 1_000_000),
             (entropy_16d_vs_scipy, 200_000), (euclidean_64d_vs_faiss, 100_000)]
    report = Report()
    for case, n in cases:
        what, n, peer, t_peer, t_ours, diff = case(n // scale, rng)
        report.add(case=what, N=f"{n:.0e}", peer=peer, **{"peer s": f"{t_peer:.2f}", "infolens s": f"{t_ours:.2f}",
                   "speed-up": f"{t_peer / t_ours:.1f}x", "difference": f"{diff:.1e}"})
    report.finish()

if __name__ == "__main__":
    main()

"""Differential entropy from k-nearest-neighbour distances.

* ``entropy``: Kozachenko-Leonenko,
  H = psi(N) - psi(k) + log V_d + (d/N) sum_i log eps_i,
  eps_i the distance from sample i to its k-th neighbour (i excluded), V_d the unit-ball volume
  of the chosen metric.
* ``renyi_entropy``: Leonenko-Pronzato-Savani of order q (0 < q < k + 1),
  H_q = log(I_q) / (1 - q),  I_q = (1/N) sum_i [(N-1) C_k V_d eps_i^d]^(1-q),
  C_k = [Gamma(k) / Gamma(k+1-q)]^(1/(1-q)).

A zero k-th neighbour distance (k+ exact duplicates of a sample) makes these -inf: the data have
atoms and no density. That is refused with an error rather than returned; ``jitter=`` breaks the
ties with seeded noise scaled to each feature's spread.
"""

from __future__ import annotations

import math

import torch

from ..result import Estimate, from_pointwise, units_of
from ..trust.trusted import Design, trusted
from ._common import (build_index, check_k, digamma, kth_neighbours, log_distance, log_unit_ball,
                      metric_order, prepare)


def _log_kth_distances(x, k, metric, backend, jitter, seed):
    """(X, p, log eps [N], tie fraction, engine name) for a self-join kNN search."""
    p = metric_order(metric)
    X = prepare(x, "x", jitter, seed)
    k = check_k(k, X.shape[0], "x")
    index = build_index(X, p, backend)
    kth, _, tied = kth_neighbours(index, k)
    zeros = int((kth == 0).sum())
    if zeros:
        raise ValueError(
            f"x has exact duplicates: {zeros} of {X.shape[0]} samples have a k-th neighbour at distance 0 "
            f"(k={k}), so the differential entropy is -inf. Use jitter=... to break ties with seeded noise, "
            "or a discrete estimator for discrete data")
    return X, p, log_distance(kth, p), float(tied.double().mean()), index.backend


@trusted(Design((("x",),), compress=("x",)))
def entropy(x, k: int = 3, *, metric="max", base=None, backend: str = "auto", jitter: float = 0.0,
            seed: int = 0) -> Estimate:
    """Kozachenko-Leonenko differential entropy of the samples ``x`` ([N] or [N, d]).

    metric: "max" (default), "euclidean", "manhattan" or any p >= 1; the estimate converges to the
    same entropy for every metric. Returns an ``Estimate`` in nats (or ``base`` units) whose
    ``pointwise`` values are the per-sample terms psi(N) - psi(k) + log V_d + d log eps_i.
    """
    X, p, log_eps, ties, engine = _log_kth_distances(x, k, metric, backend, jitter, seed)
    n, d = X.shape
    const = float(digamma(n) - digamma(k)) + log_unit_ball(d, p)
    return from_pointwise(const + d * log_eps, base=base, tie_fraction=ties, n=n, k=k,
                          method=f"kozachenko-leonenko(p={p:g})", backend=engine)


@trusted(Design((("x",),), compress=("x",)))
def renyi_entropy(x, q: float, k: int = 3, *, metric="max", base=None, backend: str = "auto",
                  jitter: float = 0.0, seed: int = 0) -> Estimate:
    """Leonenko-Pronzato-Savani Renyi entropy of order ``q`` (0 < q < k + 1, q != 1).

    ``stderr`` comes from the delta method on the mean inside the log; ``pointwise`` is None
    because the estimate is not a mean of per-sample terms.
    """
    q = float(q)
    if not (0 < q < k + 1) or q == 1:
        raise ValueError(f"q must satisfy 0 < q < k + 1 = {k + 1} and q != 1 (use entropy() for q = 1), got {q}")
    X, p, log_eps, ties, engine = _log_kth_distances(x, k, metric, backend, jitter, seed)
    n, d = X.shape
    log_ck = (math.lgamma(k) - math.lgamma(k + 1 - q)) / (1 - q)
    log_zeta = math.log(n - 1) + log_ck + log_unit_ball(d, p) + d * log_eps
    # log I_q by log-sum-exp: zeta^(1-q) spans many decades at large d.
    a = (1 - q) * log_zeta
    log_iq = torch.logsumexp(a, 0) - math.log(n)
    scale, units = units_of(base)
    terms = torch.exp(a - a.max())
    stderr = float(terms.std(correction=1) / (terms.mean() * abs(1 - q) * math.sqrt(n))) / scale
    return Estimate(float(log_iq / (1 - q)) / scale, stderr=stderr, pointwise=None, tie_fraction=ties,
                    n=n, k=k, method=f"leonenko-pronzato-savani(q={q:g}, p={p:g})", units=units, backend=engine)

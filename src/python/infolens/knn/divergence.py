"""Kullback-Leibler divergence from nearest-neighbour distances (Wang, Kulkarni, Verdu 2009).

D(P || Q) = (d/n) sum_i log(nu_k(i) / rho_k(i)) + log(m / (n - 1)),
rho_k(i) = distance from X_i to its k-th neighbour among the other n - 1 samples of P,
nu_k(i) = distance from X_i to its k-th neighbour among the m samples of Q.
The unit-ball volumes cancel, so any metric gives a consistent estimate.
"""

from __future__ import annotations

import math

from .._arrays import common_dtype
from ..result import Estimate, from_pointwise
from ..trust.trusted import Design, trusted
from ._common import build_index, check_k, kth_neighbours, log_distance, metric_order, prepare


@trusted(Design((("p_samples",), ("q_samples",)), null=("pool", "p_samples", "q_samples"),
         compress=("p_samples", "q_samples"), pooled=True,
         hypothesis="P = Q (pooled samples)"))
def kl_divergence(p_samples, q_samples, k: int = 3, *, metric="max", base=None, backend: str = "auto",
                  jitter: float = 0.0, seed: int = 0) -> Estimate:
    """D(P || Q) from samples of P ([n, d]) and of Q ([m, d])."""
    p = metric_order(metric)
    P = prepare(p_samples, "p_samples", jitter, seed)
    Q = prepare(q_samples, "q_samples", jitter, seed + 1)
    if P.shape[1] != Q.shape[1]:
        raise ValueError(f"p_samples and q_samples must have the same number of features, got {P.shape[1]} and {Q.shape[1]}")
    if P.device != Q.device:
        raise ValueError(f"p_samples and q_samples must be on the same device, got {P.device} and {Q.device}")
    n, d = P.shape
    m = Q.shape[0]
    k = check_k(k, n, "p_samples")
    check_k(k, m, "q_samples", spare=0)
    P, Q = common_dtype(P, Q)
    p_index = build_index(P, p, backend)
    rho, _, tied = kth_neighbours(p_index, k)
    nu_keys, _ = build_index(Q, p, backend).knn(k, queries=P)
    nu = nu_keys[:, k - 1]
    for name, dist in (("p_samples", rho), ("q_samples", nu)):
        zeros = int((dist == 0).sum())
        if zeros:
            raise ValueError(f"{name}: {zeros} samples of p_samples have {k} or more exact duplicates in {name} "
                             "(k-th neighbour distance 0), so the estimate would be infinite; use jitter=...")
    terms = d * (log_distance(nu, p) - log_distance(rho, p)) + math.log(m / (n - 1))
    return from_pointwise(terms, base=base, tie_fraction=float(tied.double().mean()), n=n, k=k,
                          method="wang-kulkarni-verdu", backend=p_index.backend)

"""Mutual information from k-nearest-neighbour statistics.

All counts are exact comparisons against distances that came out of the same engine, with the
strictness each paper defines (docs/NATIVE_ABI.md); there is no epsilon and no jitter unless
asked for. Joint spaces use the max-norm over all coordinates (the max over the spaces of each
space's max-norm). psi is the digamma function, N the number of samples.

* ``ksg1`` (Kraskov, Stoegbauer, Grassberger 2004, estimator 1):
  I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >,
  n_x(i) = #{j != i : |x_i - x_j| < eps_i}  (strict), eps_i the joint k-th neighbour distance.
* ``ksg2`` (estimator 2): I = psi(k) - 1/k + psi(N) - < psi(n_x) + psi(n_y) >,
  eps_x(i) = the largest x-distance among the k joint neighbours of i,
  n_x(i) = #{j != i : |x_i - x_j| <= eps_x(i)}  (non-strict).
* ``ross`` (Ross 2014; discrete y, continuous x):
  I = psi(N) - < psi(N_{y_i}) > + psi(k) - < psi(m_i) >, d_i the distance from x_i to its k-th
  neighbour among samples of the same label, m_i = #{j != i : |x_i - x_j| <= d_i} over all
  samples. (This counts the k-th neighbour itself, as Ross does; without ties it equals the
  strict count with i included that scikit-learn uses.) Every label needs k + 1 samples.
* ``mixed`` (Gao, Kannan, Oh, Viswanath 2017; data with exact ties by design):
  rho_i = joint k-th neighbour distance; if rho_i = 0, k~_i = #{j : joint_j = joint_i} (i
  included), else k~_i = k; n_x(i) = #{j : |x_i - x_j| <= rho_i} (i included), same for y;
  I = < psi(k~_i) + log N - psi(n_x) - psi(n_y) >.
* ``conditional_mutual_info`` (Frenzel-Pompe 2007):
  I(X;Y|Z) = psi(k) - < psi(n_xz + 1) + psi(n_yz + 1) - psi(n_z + 1) >, strict counts within
  the (x, y, z) max-norm k-th neighbour distance.

For continuous x, I(X;X) is infinite: ``ksg1``/``ksg2`` return ``inf`` when y equals x rather
than the finite psi(N) - psi(k) the formula would give.
"""

from __future__ import annotations

import math

import torch

from .._arrays import as_labels, common_dtype, is_discrete, same_samples
from ..result import Estimate, from_pointwise, units_of
from ..trust.trusted import Design, trusted
from ._common import build_index, check_k, digamma, kth_neighbours, metric_order, prepare

METHODS = ("auto", "ksg1", "ksg2", "ross", "mixed")
_INF = math.inf


class _Space:
    """One variable's samples and the index over them (L^p, max-norm unless said), built once and
    shared: by pairs against one y, and by every permutation of a permutation test."""

    def __init__(self, t: torch.Tensor, backend: str, p: float = _INF):
        self.t = t
        self.backend = backend
        self.p = p
        self._index = None

    def index(self):
        if self._index is None:
            self._index = build_index(self.t, self.p, self.backend)
        return self._index

    def as_dtype(self, dtype: torch.dtype) -> "_Space":
        return self if self.t.dtype == dtype else _Space(self.t.to(dtype), self.backend, self.p)

    def count(self, radii: torch.Tensor, strict: bool, perm: torch.Tensor | None = None) -> torch.Tensor:
        """Self-join counts within ``radii``; with ``perm``, for the rows in the order t[perm].

        Row i of t[perm] is point perm[i] of this index and the other rows are the other points,
        so its count is point perm[i]'s own count: the radii go to perm, the counts come back.
        """
        if perm is None:
            return self.index().count(radii, strict=strict)
        perm = perm.to(radii.device)
        scattered = torch.empty_like(radii)
        scattered[perm] = radii
        return self.index().count(scattered, strict=strict)[perm]


def _marginal_extent(t: torch.Tensor, neighbours: torch.Tensor, rows: int = 1 << 16) -> torch.Tensor:
    """max over the k neighbours j of i of max_c |t_ic - t_jc|: the same key arithmetic as the engine."""
    out = torch.empty(t.shape[0], dtype=t.dtype, device=t.device)
    for r0 in range(0, t.shape[0], rows):
        block = t[r0 : r0 + rows]
        diff = t[neighbours[r0 : r0 + rows]] - block[:, None, :]
        out[r0 : r0 + rows] = diff.abs().amax(dim=(1, 2))
    return out


def _infinite(n, k, method, base, engine) -> Estimate:
    _, units = units_of(base)
    return Estimate(_INF, stderr=0.0, pointwise=None, n=n, k=k, method=method, units=units, backend=engine)


def _permuted(t: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    return t if perm is None else t[perm.to(t.device)]


def _ksg(xs: _Space, ys: _Space, k: int, method: str, base, backend: str, perm=None) -> Estimate:
    X, Y = xs.t, _permuted(ys.t, perm)
    n = X.shape[0]
    joint = build_index(torch.cat([X, Y], dim=1), _INF, backend)
    if X.shape == Y.shape and torch.equal(X, Y):
        return _infinite(n, k, method, base, joint.backend)
    eps, neighbours, tied = kth_neighbours(joint, k)
    if method == "ksg1":
        n_x = xs.count(eps, strict=True)
        n_y = ys.count(eps, strict=True, perm=perm)
        terms = digamma(k) + digamma(n) - digamma(n_x + 1) - digamma(n_y + 1)
    else:
        n_x = xs.count(_marginal_extent(X, neighbours), strict=False)
        n_y = ys.count(_marginal_extent(Y, neighbours), strict=False, perm=perm)
        terms = digamma(k) - 1.0 / k + digamma(n) - digamma(n_x) - digamma(n_y)
    return from_pointwise(terms, base=base, tie_fraction=float(tied.double().mean()), n=n, k=k,
                          method=method, backend=joint.backend)


def _mixed(xs: _Space, ys: _Space, k: int, base, backend: str, perm=None) -> Estimate:
    X = xs.t
    joint_t = torch.cat([X, _permuted(ys.t, perm)], dim=1)
    joint = build_index(joint_t, _INF, backend)
    rho, _, tied = kth_neighbours(joint, k)
    n = X.shape[0]
    zero = rho == 0
    k_tilde = torch.full_like(rho, k, dtype=torch.int64)
    if bool(zero.any()):
        # Querying the duplicated rows against the whole set counts i itself, as Gao defines.
        k_tilde[zero] = joint.count(torch.zeros_like(rho[zero]), strict=False, queries=joint_t[zero].contiguous())
    n_x = xs.count(rho, strict=False) + 1
    n_y = ys.count(rho, strict=False, perm=perm) + 1
    terms = digamma(k_tilde) + math.log(n) - digamma(n_x) - digamma(n_y)
    return from_pointwise(terms, base=base, tie_fraction=float((tied | zero).double().mean()), n=n, k=k,
                          method="mixed", backend=joint.backend)


class _Labels:
    """Discrete labels, grouped once and shared by pairs."""

    def __init__(self, y, k: int):
        self.codes, self.values, self.counts = as_labels(y, "y")
        small = self.counts < k + 1
        if bool(small.any()):
            bad = ", ".join(f"{v!r} ({int(c)})" for v, c in zip(self.values[small].tolist(), self.counts[small].tolist()))
            raise ValueError(f"y: Ross's estimator needs at least k + 1 = {k + 1} samples of every label; "
                             f"these labels have fewer (count): {bad}. Lower k or merge rare labels")


def _ross(xs: _Space, labels: _Labels, k: int, base, backend: str, perm=None) -> Estimate:
    X = xs.t
    n = X.shape[0]
    codes = _permuted(labels.codes, perm).to(X.device)
    radius = torch.empty(n, dtype=X.dtype, device=X.device)
    tied = torch.zeros(n, dtype=torch.bool, device=X.device)
    engine = ""
    for c in range(labels.values.numel()):
        rows = (codes == c).nonzero().squeeze(1)
        index = build_index(X[rows].contiguous(), xs.p, backend)
        radius[rows], _, tied[rows] = kth_neighbours(index, k)
        engine = index.backend
    m = xs.count(radius, strict=False)
    terms = digamma(n) - digamma(labels.counts.to(X.device)[codes]) + digamma(k) - digamma(m)
    return from_pointwise(terms, base=base, tie_fraction=float(tied.double().mean()), n=n, k=k,
                          method="ross", backend=engine)


def _check_method(method: str, y) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "ross" if is_discrete(y) else "ksg1"
    return method


def _prepare_y(y, method: str, k: int, backend: str, jitter: float, seed: int):
    if method == "ross":
        return _Labels(y, k)
    return _Space(prepare(y, "y", jitter, seed + 1), backend)


def _spaces(X: torch.Tensor, Y, metric, backend: str):
    """(x's space, y's space or labels) checked against each other, in one dtype."""
    if isinstance(Y, _Labels):
        if Y.codes.shape[0] != X.shape[0]:
            raise ValueError(f"x and y must have the same number of samples, got {X.shape[0]} and {Y.codes.shape[0]}")
        return _Space(X, backend, metric_order(metric)), Y
    same_samples("x", X, "y", Y.t)
    X = common_dtype(X, Y.t)[0]
    return _Space(X, backend), Y.as_dtype(X.dtype)


def _one(xs: _Space, Y, k, method, base, backend, perm=None) -> Estimate:
    """I(X; Y), or I(X; Y[perm]) for a permutation test."""
    if isinstance(Y, _Labels):
        return _ross(xs, Y, k, base, backend, perm)
    if method == "mixed":
        return _mixed(xs, Y, k, base, backend, perm)
    return _ksg(xs, Y, k, method, base, backend, perm)


def _shared_null(args: dict):
    """The permutation statistic I(X; Y[perm]), with x, y and both marginal indices prepared once."""
    method = _check_method(args["method"], args["y"])
    k, backend = args["k"], args["backend"]
    X = prepare(args["x"], "x", args["jitter"], args["seed"])
    xs, Y = _spaces(X, _prepare_y(args["y"], method, k, backend, args["jitter"], args["seed"]), args["metric"], backend)
    return lambda perm: [float(_one(xs, Y, k, method, args["base"], backend, perm))]


@trusted(Design((("x", "y"),), null=("shuffle", "y"), compress=("x", "y"), shared_null=_shared_null,
         hypothesis="the independence of x and y"))
def mutual_info(x, y, k: int = 3, *, method: str = "auto", metric="max", base=None, backend: str = "auto",
                jitter: float = 0.0, seed: int = 0) -> Estimate:
    """Mutual information I(X; Y) between samples ``x`` [N, dx] and ``y`` [N, dy] (or labels [N]).

    method: "ksg1" (default for real-valued y), "ksg2", "ross" (default for integer or boolean
    y, read as class labels), "mixed" (Gao et al., for data with exact ties by design).
    ``metric`` is the metric of x for "ross"; the KSG and mixed estimators use the max-norm.
    Returns an ``Estimate`` whose ``pointwise`` values are the per-sample terms (local MI).
    """
    method = _check_method(method, y)
    X = prepare(x, "x", jitter, seed)
    check_k(k, X.shape[0], "x")
    xs, Y = _spaces(X, _prepare_y(y, method, k, backend, jitter, seed), metric, backend)
    return _one(xs, Y, k, method, base, backend)


@trusted(Design((("xs", "y"),), null=("shuffle", "y"), compress=("xs", "y"),
         hypothesis="the independence of each x and y"))
def mutual_info_batch(xs, y, k: int = 3, *, method: str = "auto", metric="max", base=None,
                      backend: str = "auto", jitter: float = 0.0, seed: int = 0) -> list[Estimate]:
    """I(X_j; Y) for every x in ``xs`` against one ``y`` (e.g. every layer against the labels).

    y is prepared once: its labels grouped once for "ross", its marginal index built once and
    reused for every pair otherwise. Each result equals ``mutual_info(x_j, y, ...)``.
    """
    method = _check_method(method, y)
    xs = list(xs)
    if not xs:
        raise ValueError("xs must hold at least one array")
    Y = _prepare_y(y, method, k, backend, jitter, seed)
    out = []
    for j, x in enumerate(xs):
        X = prepare(x, f"xs[{j}]", jitter, seed)
        check_k(k, X.shape[0], f"xs[{j}]")
        out.append(_one(*_spaces(X, Y, metric, backend), k, method, base, backend))
    return out


@trusted(Design((("x", "y", "z"),), null=("local", "y", "z"), compress=("x", "y", "z"),
         hypothesis="the conditional independence of x and y given z (local permutation)"))
def conditional_mutual_info(x, y, z, k: int = 3, *, base=None, backend: str = "auto", jitter: float = 0.0,
                            seed: int = 0) -> Estimate:
    """Frenzel-Pompe conditional mutual information I(X; Y | Z), max-norm, strict counts."""
    X = prepare(x, "x", jitter, seed)
    Y = prepare(y, "y", jitter, seed + 1)
    Z = prepare(z, "z", jitter, seed + 2)
    same_samples("x", X, "y", Y)
    same_samples("x", X, "z", Z)
    n = X.shape[0]
    k = check_k(k, n, "x")
    X, Y, Z = common_dtype(X, Y, Z)
    if X.device.type == "cuda":
        # One copy, [X | Z | Y]: the marginals (X, Z), (Z, Y) and Z are column blocks of it, which the
        # CUDA engine reads in place. A max-norm key is a max over coordinates, exact in any order,
        # so the column order changes no key, no neighbour and no count.
        dx, dz = X.shape[1], Z.shape[1]
        joint_t = torch.cat([X, Z, Y], dim=1)
        marginals = (lambda: joint_t[:, : dx + dz], lambda: joint_t[:, dx:], lambda: joint_t[:, dx : dx + dz])
    else:  # the C++ engine takes contiguous arrays: each marginal copied when it is counted
        joint_t = torch.cat([X, Y, Z], dim=1)
        marginals = (lambda: torch.cat([X, Z], dim=1), lambda: torch.cat([Y, Z], dim=1), lambda: Z)
    joint = build_index(joint_t, _INF, backend)
    eps, _, tied = kth_neighbours(joint, k)
    n_xz, n_yz, n_z = (build_index(part(), _INF, backend).count(eps, strict=True) for part in marginals)
    terms = digamma(k) - digamma(n_xz + 1) - digamma(n_yz + 1) + digamma(n_z + 1)
    return from_pointwise(terms, base=base, tie_fraction=float(tied.double().mean()), n=n, k=k,
                          method="frenzel-pompe", backend=joint.backend)

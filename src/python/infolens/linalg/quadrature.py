"""Stochastic Lanczos quadrature (SLQ) of a spectrum, deflated by its top eigenpairs.

Method. With U [n, k] the orthonormal top eigenvectors and P = I - U U^T,

    tr f(A) = sum_{i<=k} f(lambda_i) + tr f(A') ,   A' = P A P on the complement of span(U),

and for Rademacher z, z' = P z has E[z'^T f(A') z'] = tr f(A'). For each probe, m Lanczos steps
on A' from z' / ||z'|| give a tridiagonal T whose eigenvalues (the nodes) and squared first
eigenvector components times ||z'||^2 (the weights) are the Gauss quadrature rule of the
spectral measure of z': sum_i w_i f(theta_i) = z'^T f(A') z' exactly for polynomials of degree
< 2m, and to the accuracy of the best polynomial approximation of f otherwise (Golub & Meurant;
Ubaru, Chen & Saad 2017). One run serves every f, so a whole family of spectral sums (Renyi
entropies of all orders, log-determinants over a grid of shifts) costs one set of calls.

Decisions.
* Deflation is what makes SLQ accurate on kernel and curvature spectra: most of their mass sits
  in a few large eigenvalues, which plain SLQ sees only through the probes' random weights
  (0.1-0.2 nats of error on von Neumann entropies); taken exactly, they leave a flat remainder
  that the probes average well. A control variate with a known trace (tr A, tr A^2) removes most
  of what probe noise is left (``Quadrature.trace``).
* The probes' recurrences are independent (not block Lanczos), but advance together: each step is
  ONE operator call on the block of all probes' vectors, so p probes of m steps cost m calls.
* Each new vector, after the three-term recurrence, is projected against U, and against its own
  probe's earlier vectors whenever the estimated loss of orthogonality reaches sqrt(eps)
  (partial reorthogonalisation, ``_Orthogonality``), so round-off cannot bring the deflated
  directions back or create ghost copies of eigenvalues. The p x m Lanczos vectors are stored
  for this: memory n p m in the operator's precision (float64, or float32 for an operator that
  computes in float32, such as a float32 model's curvature).
* Breakdown: a beta below 1e-10 of the operator's scale means the probe's Krylov space is
  invariant (a low-rank remainder, a remainder that deflation left empty, a tiny complement);
  the rule found so far is then exact for that probe, its recurrence stops, and its remaining
  nodes carry weight 0. The other probes go on; a stopped probe's column is zero from then on.
* Steps are capped at n - k, the complement's dimension; with k = n there is nothing to estimate.
* The rules are small ([probes, steps]) and live on the CPU whatever the operator's device.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from . import _probes
from ._checks import positive_int
from ._orthogonal import norms, project_out
from .lanczos import Eigenpairs, top_eigenpairs
from .operator import as_operator

_BREAKDOWN = 1e-10  # beta below this fraction of the operator's scale ends a recurrence


@dataclass
class Quadrature:
    """Exact deflated eigenvalues ``top`` [k] and, per probe, the Gauss rule of the complement:
    ``nodes`` and ``weights`` [probes, steps] (weight 0 after a probe's breakdown), all float64 on
    the CPU; the operator's dimension ``n`` and the operator ``calls`` spent (deflation included
    when ``spectral_quadrature`` computed it)."""

    top: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    n: int
    calls: int

    def trace(self, f, controls=()) -> tuple[float, float]:
        """(estimate of tr f(A), its standard error from the spread over the probes).

        ``f``: an elementwise torch function of eigenvalues, defined at the nodes (which, for a
        PSD operator, may fall a round-off below 0). ``controls``: pairs (g, tr g(A)) of
        functions whose traces are known exactly (tr A, or tr A^2 from one pass over a kernel
        matrix). Their per-probe errors are regressed out of f's, removing the probe noise f
        shares with them: on a flat remainder -x log x is nearly linear in x, and a control x
        cuts the error several-fold at no cost. The standard error is then that of the
        regression's intercept. With fewer than len(controls) + 2 probes they are not used.
        """
        return self.traces([f], controls)[0]

    def traces(self, fs, controls=()) -> list[tuple[float, float]]:
        """``trace`` for several functions on the same rule."""
        if not self.nodes.numel():  # the deflation took the whole space
            return [(self._exact(f), 0.0) for f in fs]
        noise = [self._per_probe(g) - (float(total) - self._exact(g)) for g, total in controls]
        results = []
        for f in fs:
            rest, error = self._estimate(self._per_probe(f), noise)
            results.append((self._exact(f) + rest, error))
        return results

    def _exact(self, f) -> float:
        return float(f(self.top).sum()) if self.top.numel() else 0.0

    def _per_probe(self, f) -> torch.Tensor:
        # padded nodes carry weight 0, and f need not be finite there (log 0): select, not multiply
        return torch.where(self.weights > 0, self.weights * f(self.nodes), 0.0).sum(dim=1)

    @staticmethod
    def _estimate(y: torch.Tensor, noise: list) -> tuple[float, float]:
        probes = y.numel()
        if not noise or probes <= len(noise) + 1:
            return _probes.mean_and_error(y)
        design = torch.stack([torch.ones_like(y), *noise], dim=1)
        coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
        residual = y - design @ coef
        # the intercept's standard error: residual variance over the probes' design
        variance = float(residual.square().sum()) / (probes - design.shape[1])
        cov = torch.linalg.pinv(design.T @ design)
        return float(coef[0]), math.sqrt(max(variance * float(cov[0, 0]), 0.0))


def spectral_quadrature(op, *, probes: int | torch.Tensor = 32, steps: int = 40, deflate=None,
                        seed: int = 0) -> Quadrature:
    """Gauss quadrature of the spectrum of ``op`` (an ``Operator`` or a dense symmetric matrix),
    from which ``Quadrature.trace`` estimates any tr f(A).

    ``probes``: the number of Rademacher probes, or the probe vectors themselves [n, p] (each
    probe's rule then measures z'^T f(A') z' for its own z). ``steps``: Lanczos steps per probe,
    one operator call each. ``deflate``: None (plain SLQ), ``Eigenpairs`` of the top of the
    spectrum (their eigenvalues are taken exactly and the probes see only the complement), or an
    int k to compute the top k first with ``top_eigenpairs`` (0: plain SLQ).
    """
    op = as_operator(op)
    z = _probe_block(probes, op, seed)
    steps = positive_int(steps, "steps")
    calls_before = op.calls
    n = op.n
    if isinstance(deflate, numbers.Integral) and not isinstance(deflate, bool):
        if deflate < 0:
            raise ValueError(f"deflate must be None, Eigenpairs or a count >= 0, got {deflate}")
        deflate = top_eigenpairs(op, deflate, seed=seed) if deflate else None
    if deflate is None:
        u, top = torch.zeros(n, 0, dtype=torch.float64, device=op.device), torch.zeros(0, dtype=torch.float64)
    elif isinstance(deflate, Eigenpairs):
        u, top = deflate.vectors.to(op.device, torch.float64), deflate.values.to("cpu", torch.float64)
        if u.ndim != 2 or u.shape[0] != n or u.shape[1] != top.numel():
            raise ValueError(f"deflate's vectors must be [{n}, {top.numel()}], got {tuple(u.shape)}")
    else:
        raise TypeError(f"deflate must be None, an int or Eigenpairs, got {type(deflate).__name__}")

    steps = min(steps, n - u.shape[1])
    nodes = torch.zeros(z.shape[1], steps, dtype=torch.float64)
    weights = torch.zeros_like(nodes)
    if steps:
        alpha, beta, length, norms2 = _lanczos(op, u, z, steps, float(top.abs().max()) if top.numel() else 0.0)
        for p in range(z.shape[1]):
            m = int(length[p])
            if m:
                t = torch.diag(alpha[p, :m]) + torch.diag(beta[p, :m - 1], 1) + torch.diag(beta[p, :m - 1], -1)
                theta, s = torch.linalg.eigh(t)
                nodes[p, :m] = theta
                weights[p, :m] = norms2[p] * s[0].square()
    return Quadrature(top, nodes, weights, n, op.calls - calls_before)


def _probe_block(probes, op, seed: int) -> torch.Tensor:
    """The probes [n, p]: given, or ``probes`` Rademacher vectors drawn from the seed."""
    if not isinstance(probes, torch.Tensor):
        count = positive_int(probes, "probes")
        return _probes.rademacher(op.n, count, _probes.generator(seed, _probes.PROBES), op.device)
    if probes.ndim != 2 or probes.shape[0] != op.n or probes.shape[1] == 0:
        raise ValueError(f"probes must be a count or a block [{op.n}, p], got shape {tuple(probes.shape)}")
    return probes.to(op.device, torch.float64)


def _lanczos(op, u: torch.Tensor, z: torch.Tensor, steps: int, scale: float):
    """The recurrences of the probes z [n, p], all advanced by one call per step: (alpha, beta
    [p, steps], steps completed [p], ||z'||^2 [p]), on the CPU."""
    probes = z.shape[1]
    before = z.square().sum(dim=0)
    z = project_out(z, u).T.contiguous()  # [probes, n]: each probe's vectors are rows
    norms2 = z.square().sum(dim=1)
    # a probe (numerically) inside span(U) has nothing left to measure: a breakdown at step 0
    active = norms2 > _BREAKDOWN ** 2 * before
    v = torch.where(active[:, None], z / norms2.clamp(min=torch.finfo(torch.float64).tiny).sqrt()[:, None], 0.0)
    # each probe's Lanczos vectors as rows, so that projecting against the leading j + 1 of them
    # streams contiguous memory (a batched bmm over a strided view ran 4x slower). Stored in the
    # operator's own precision: a float32 operator's products carry 1e-7 relative error, so a
    # float64 basis would only double the traffic of the reorthogonalisation.
    dtype = getattr(op, "dtype", torch.float64)
    basis = z.new_empty(probes, steps, op.n, dtype=dtype)  # row j is written before it is read
    alpha = z.new_zeros(probes, steps)
    beta = torch.zeros_like(alpha)
    length = torch.zeros(probes, dtype=torch.int64, device=z.device)
    previous = torch.zeros_like(v)
    watch = _Orthogonality(probes, steps, torch.finfo(dtype).eps)
    # the step's elementwise work in place and in one scratch block: on a CPU each fresh
    # temporary of the block's size costs its page faults, more than the arithmetic on it
    scratch = torch.empty_like(v)
    for j in range(steps):
        basis[:, j] = v
        w = op(v.T).T.contiguous()
        if j:
            w.addcmul_(beta[:, j - 1, None], previous, value=-1)
        a = torch.mul(v, w, out=scratch).sum(dim=1)
        w.addcmul_(a[:, None], v, value=-1)
        alpha[:, j] = a
        w = project_out(w.T, u).T.contiguous()  # against U (CGS2: U is small, every step)
        b = norms(w, dim=1)
        scale = max(scale, float(alpha[:, j].abs().max()), float(b.max()))
        for i in watch.lost(j, alpha, beta, b, scale, active):  # partial reorthogonalisation
            q = basis[i, :j + 1]
            for _ in range(2):  # a second pass only where the first removed most of w (DGKS)
                size = float(w[i].square().sum())
                coef = q @ w[i].to(dtype)
                w[i] -= (coef @ q).to(w.dtype)
                alpha[i, j] += coef[j]
                if float(w[i].square().sum()) >= 0.5 * size:
                    break
            b[i] = norms(w[i], dim=0)
        length[active] = j + 1
        active = active & (b > _BREAKDOWN * scale)
        if j + 1 == steps or not bool(active.any()):
            break
        beta[:, j] = torch.where(active, b, 0.0)
        previous = v
        if bool(active.all()):  # the usual step: no probe has broken down
            v = w.div_(b[:, None])
        else:
            v = torch.where(active[:, None], w / b.clamp(min=torch.finfo(torch.float64).tiny)[:, None], 0.0)
    return alpha.cpu(), beta.cpu(), length.cpu(), norms2.cpu()


class _Orthogonality:
    """Partial reorthogonalisation (Simon 1984; Larsen's PROPACK): the inner products
    omega_k = v_{j+1}^T v_k of the next Lanczos vector with the earlier ones follow a recurrence
    in the alphas and betas alone, started at round-off (eps) and grown by eps ||A|| / beta_j
    each step. While every |omega_k| stays below sqrt(eps) the basis is semi-orthogonal, which
    keeps the tridiagonal T, hence the quadrature, exact to O(eps ||A||) (Simon); the first step
    past that bound, the new vector is projected against the probe's whole basis, and so is the
    one after it, both restarting their omegas at eps. Full reorthogonalisation at every step
    reads the whole basis twice per step, and was SLQ's own largest cost on a million-parameter
    Hessian; the estimate costs O(steps) scalars per probe."""

    def __init__(self, probes: int, steps: int, eps: float):
        self.eps, self.bound = eps, math.sqrt(eps)
        self.now = torch.zeros(probes, steps + 1, dtype=torch.float64)   # omega_{j, k}
        self.before = torch.zeros_like(self.now)                          # omega_{j-1, k}
        self.now[:, 0] = 1.0
        self.again = torch.zeros(probes, dtype=torch.bool)

    def lost(self, j: int, alpha, beta, b, scale: float, active) -> list[int]:
        """The probes whose next vector must be reorthogonalised; updates the estimates."""
        a, bt, bj = alpha.cpu(), beta.cpu(), b.cpu().clamp(min=torch.finfo(torch.float64).tiny)
        nxt = torch.zeros_like(self.now)
        if j:
            k = torch.arange(j)
            up = bt[:, k] * self.now[:, k + 1]
            down = torch.cat([torch.zeros(a.shape[0], 1, dtype=torch.float64), bt[:, :j - 1] * self.now[:, :j - 1]], 1)
            nxt[:, :j] = (up + (a[:, :j] - a[:, j:j + 1]) * self.now[:, :j] + down
                          - bt[:, j - 1:j] * self.before[:, :j]) / bj[:, None]
        # round-off's contribution, with the sign that grows |omega|
        noise = self.eps * scale / bj[:, None]
        nxt[:, :j] += torch.where(nxt[:, :j] >= 0, noise, -noise)
        nxt[:, j] = self.eps * scale / bj   # v_j against the new vector: the recurrence's round-off
        nxt[:, j + 1] = 1.0
        redo = (nxt[:, :j + 1].abs().max(dim=1).values > self.bound) | self.again
        redo &= active.cpu()
        nxt[redo, :j + 1] = self.eps
        self.again = redo & ~self.again   # the vector after a reorthogonalised one is done too
        self.before, self.now = self.now, nxt
        return redo.nonzero().flatten().tolist()

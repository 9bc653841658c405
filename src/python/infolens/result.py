"""The value every estimator returns.

An ``Estimate`` *is* a float (it subclasses ``float``), so ``entropy(x) - 1.4`` and
``f"{mi:.3f}"`` work as they would on a number, and it carries what a careful reader needs:
the standard error, the per-sample (pointwise) values whose mean it is, the fraction of samples
whose neighbour set was decided by a tie, and how it was computed. Asked for (``ci=``,
``n_permutations=``, ``ladder=``, ``compress=`` on any estimator, see ``infolens.trust``), it
also carries a confidence interval, a permutation p-value, the subsample ladder with its
settled/unsettled flag, and the compression the data went through.
"""

from __future__ import annotations

import math

import torch


class Estimate(float):
    """A point estimate in ``units`` with its diagnostics.

    Attributes: ``value`` (the float), ``stderr`` (standard error of the mean of the pointwise
    terms, std/sqrt(N): it ignores the weak dependence between kNN terms, so read it as a scale,
    not an exact interval), ``pointwise`` (numpy array of per-sample values or None),
    ``tie_fraction`` (share of samples whose k-th neighbour distance is shared by another point),
    ``n``, ``k``, ``method``, ``units``, ``backend``, and ``details`` (a dict of how it was
    computed where that takes more than a word: bandwidths, computation path, operator calls).

    Set only when asked for (None otherwise): ``interval`` (low, high) at level ``confidence``;
    ``p_value`` of the permutation test with its ``n_permutations``; ``ladder`` (an
    ``infolens.trust.Ladder``: the estimate at N, N/2, N/4, ... and its extrapolation) and
    ``settled`` (False when the ladder still drifts by more than its error bars: do not trust
    the value); ``compression`` (what each variable was compressed to). With a ladder,
    ``stderr`` is the ladder's standard error of the value and ``details["pointwise_stderr"]``
    keeps the scale from the pointwise terms.
    """

    _TRUST = ("interval", "confidence", "p_value", "n_permutations", "ladder", "settled", "compression")

    def __new__(cls, value, *, stderr=math.nan, pointwise=None, tie_fraction=0.0, n=0, k=0,
                method="", units="nats", backend="", details=None, interval=None, confidence=None,
                p_value=None, n_permutations=None, ladder=None, settled=None, compression=None):
        obj = super().__new__(cls, value)
        obj.stderr = float(stderr)
        obj.pointwise = pointwise
        obj.tie_fraction = float(tie_fraction)
        obj.n = int(n)
        obj.k = int(k)
        obj.method = method
        obj.units = units
        obj.backend = backend
        obj.details = dict(details or {})
        obj.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        obj.confidence = confidence
        obj.p_value = p_value
        obj.n_permutations = n_permutations
        obj.ladder = ladder
        obj.settled = settled
        obj.compression = compression
        return obj

    @property
    def value(self) -> float:
        return float(self)

    def _fields(self) -> dict:
        return dict(stderr=self.stderr, pointwise=self.pointwise, tie_fraction=self.tie_fraction,
                    n=self.n, k=self.k, method=self.method, units=self.units, backend=self.backend,
                    details=self.details, **{name: getattr(self, name) for name in self._TRUST})

    def replace(self, value=None, **fields) -> "Estimate":
        """A copy with ``fields`` (and the value, if given) replaced."""
        return Estimate(float(self) if value is None else value, **{**self._fields(), **fields})

    def __reduce__(self):
        return (_rebuild, (float(self), self._fields()))

    def __repr__(self) -> str:
        head = (f"Estimate({float(self):.6g} ± {self.stderr:.2g} {self.units}, method={self.method!r}, "
                f"n={self.n}, k={self.k}, ties={100 * self.tie_fraction:.2g}%, backend={self.backend!r})")
        lines = [head]
        if self.interval is not None:
            lines.append(f"  {100 * self.confidence:g}% interval [{self.interval[0]:.6g}, {self.interval[1]:.6g}]"
                         " (subsampling)")
        if self.p_value is not None:
            null = self.details.get("null_hypothesis", "")
            lines.append(f"  permutation test{f' of {null}' if null else ''}: p = {self.p_value:.3g} "
                         f"({self.n_permutations} permutations at n = {self.details.get('permutation_size', self.n)})")
        if self.compression:
            lines.append("  compressed: " + "; ".join(f"{name} {c}" for name, c in self.compression.items()))
        if self.ladder is not None:
            lines.extend("  " + line for line in str(self.ladder).splitlines())
        return "\n".join(lines)

    __str__ = __repr__


def _rebuild(value, fields):
    return Estimate(value, **fields)


def units_of(base) -> tuple[float, str]:
    """(log of the base, name of the unit); ``base=None`` means nats."""
    if base is None or base == math.e:
        return 1.0, "nats"
    base = float(base)
    if not base > 0 or base == 1 or not math.isfinite(base):
        raise ValueError(f"base must be a positive number other than 1, got {base}")
    name = {2.0: "bits", 10.0: "hartleys"}.get(base, f"log-base-{base:g} units")
    return math.log(base), name


def from_pointwise(terms, *, base, **fields) -> Estimate:
    """The mean of per-sample terms (float64 torch tensor, nats) as an Estimate in ``base`` units."""
    scale, units = units_of(base)
    terms = terms.detach().to("cpu", torch.float64) / scale
    n = terms.numel()
    stderr = float(terms.std(correction=1)) / math.sqrt(n) if n > 1 else math.nan
    return Estimate(float(terms.mean()), stderr=stderr, pointwise=terms.numpy(), units=units, **fields)

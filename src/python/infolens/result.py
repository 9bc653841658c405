"""The value every estimator returns.

An ``Estimate`` *is* a float (it subclasses ``float``), so ``entropy(x) - 1.4`` and
``f"{mi:.3f}"`` work as they would on a number, and it carries what a careful reader needs:
the standard error, the per-sample (pointwise) values whose mean it is, the fraction of samples
whose neighbour set was decided by a tie, and how it was computed.
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
    """

    def __new__(cls, value, *, stderr=math.nan, pointwise=None, tie_fraction=0.0, n=0, k=0,
                method="", units="nats", backend="", details=None):
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
        return obj

    @property
    def value(self) -> float:
        return float(self)

    def _fields(self) -> dict:
        return dict(stderr=self.stderr, pointwise=self.pointwise, tie_fraction=self.tie_fraction,
                    n=self.n, k=self.k, method=self.method, units=self.units, backend=self.backend,
                    details=self.details)

    def __reduce__(self):
        return (_rebuild, (float(self), self._fields()))

    def __repr__(self) -> str:
        return (f"Estimate({float(self):.6g} ± {self.stderr:.2g} {self.units}, method={self.method!r}, "
                f"n={self.n}, k={self.k}, ties={100 * self.tie_fraction:.2g}%, backend={self.backend!r})")

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

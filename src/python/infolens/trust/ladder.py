"""The subsample ladder: an estimate at N, N/2, N/4, ..., its error bars, and its extrapolation.

Level l splits the samples into 2^l disjoint random blocks of about N / 2^l rows and estimates on
each block. Disjoint blocks of i.i.d. rows are independent samples of the distribution, so the
spread of a level's block estimates measures the sampling variance at that size without any
resampling approximation (m-out-of-n subsampling without replacement, Politis & Romano 1994).

* Standard error and interval: the estimators here converge at rate sqrt(n), so
  n * Var(estimate at n) = V is the same at every size; V is pooled over the levels (weighted by
  their degrees of freedom, 2^l - 1 each) and scaled to N: se = sqrt(V / N). The interval is
  value +- t_{dof, (1+confidence)/2} * se. Small blocks carry higher-order variance, which makes
  the interval err on the wide side.
* Consistency (Holmes & Nemenman 2019; the protocol of "Accurate estimation of mutual information
  in high dimensional data", 2025): the level means are fitted by least squares as a line in 1/n
  and extrapolated to 1/n = 0. The drift is that extrapolation minus the value at N: how far the
  estimate would still move with unlimited data. Every level mean has variance about V / N, so the
  drift has standard error sqrt(V / N * sum c_l^2) for the fit's coefficients c_l; the ladder is
  *settled* when |drift| <= 2 standard errors. An unsettled ladder says: the estimator's bias at
  this N is larger than its noise, and the value (and its interval) should not be trusted.
  Levels share data, which correlates their means and makes the test conservative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SETTLED_Z = 2.0


@dataclass(frozen=True)
class Ladder:
    """Estimates at N, N/2, N/4, ... (``sizes``, ``means``, ``blocks`` per level) and what follows."""

    sizes: tuple[float, ...]
    means: tuple[float, ...]
    blocks: tuple[tuple[float, ...], ...]
    stderr: float
    dof: int
    extrapolated: float
    drift: float
    drift_stderr: float

    @property
    def settled(self) -> bool:
        return bool(abs(self.drift) <= SETTLED_Z * self.drift_stderr)

    def __str__(self) -> str:
        state = "settled" if self.settled else "NOT settled: the estimate still drifts with n"
        rows = ["ladder  n      " + "  ".join(f"{int(round(s)):>9d}" for s in self.sizes),
                "        mean   " + "  ".join(f"{m:>9.4g}" for m in self.means),
                f"  extrapolated to n = inf: {self.extrapolated:.6g} (drift {self.drift:+.3g} ± "
                f"{self.drift_stderr:.2g}): {state}"]
        return "\n".join(rows)


def t_quantile(p: float, dof: int) -> float:
    """Student-t quantile by the Cornish-Fisher expansion around the normal (error < 1e-3 for dof >= 3)."""
    z = float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))
    if dof <= 0:
        return math.nan
    v = float(dof)
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


def build(value: float, n: int, levels: list[tuple[float, list[float]]]) -> Ladder:
    """The ladder from the full value and, per level, (mean block size, block estimates)."""
    sizes = [float(n)] + [size for size, _ in levels]
    means = [value] + [sum(vals) / len(vals) for _, vals in levels]
    dofs = [len(vals) - 1 for _, vals in levels]
    dof = sum(dofs)
    spread = sum(size * sum((v - mean) ** 2 for v in vals)
                 for (size, vals), mean in zip(levels, means[1:]))
    per_sample_var = spread / dof if dof > 0 else math.nan
    var_n = per_sample_var / n
    # Least squares of the level means on x = 1/size; the intercept is sum w_l * mean_l.
    xs = [1.0 / s for s in sizes]
    x_bar = sum(xs) / len(xs)
    sxx = sum((x - x_bar) ** 2 for x in xs)
    weights = [1.0 / len(xs) - x_bar * (x - x_bar) / sxx for x in xs]
    extrapolated = sum(w * m for w, m in zip(weights, means))
    coeffs = [w - (1.0 if i == 0 else 0.0) for i, w in enumerate(weights)]
    return Ladder(sizes=tuple(sizes), means=tuple(means),
                  blocks=((value,),) + tuple(tuple(vals) for _, vals in levels),
                  stderr=math.sqrt(var_n), dof=dof, extrapolated=extrapolated, drift=extrapolated - value,
                  drift_stderr=math.sqrt(var_n * sum(c * c for c in coeffs)))


def interval(value: float, ladder: Ladder, confidence: float) -> tuple[float, float]:
    half = t_quantile(0.5 + confidence / 2, ladder.dof) * ladder.stderr
    return value - half, value + half

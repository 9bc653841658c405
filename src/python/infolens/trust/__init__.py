"""Trust the numbers: confidence intervals, permutation tests, the consistency ladder, compression.

No mutual-information estimator is reliable everywhere: high dimension, high MI and small N bias
them all. Every kNN and kernel estimator takes, besides its own arguments,

* ``ci=0.95``: a confidence interval from disjoint subsamples (no bootstrap: duplicated rows
  collapse kNN distances), and the ladder it comes from;
* ``ladder=L``: the estimate at N, N/2, ..., N/2^L, extrapolated to infinite N, with a flag
  (``Estimate.settled``) that is False while the estimate still drifts by more than its error bars;
* ``n_permutations=B``: a permutation test of independence (of two samples' equality for a
  divergence, of conditional independence for conditional MI) and its p-value;
* ``compress=``: PCA or random projection of the variables before estimating.

One ``Estimate`` carries them all; printing it shows them. See ``trusted`` for how they are
computed, ``ladder`` for the interval and the flag, ``permutation`` for the null rearrangements.
"""

from .compress import Compressed
from .ladder import Ladder
from .trusted import Design, trusted

__all__ = ["Ladder", "Compressed", "Design", "trusted"]

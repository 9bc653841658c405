"""infolens: what neural networks learn, measured in the units of information theory.

kNN estimators (entropy, mutual information, divergences) and kernel-matrix entropies of
representations (matrix-based Renyi entropy, Vendi score, diffusion spectral entropy, RankMe),
and the curvature of a model's loss (``infolens.curvature``) over the Krylov methods of
``infolens.linalg``.
Every kNN and kernel estimator also takes ``ci=``, ``n_permutations=``, ``ladder=`` and
``compress=`` (``infolens.trust``): confidence intervals, permutation tests, a consistency check
over subsample sizes and compressed representations; ``infolens.layers`` diagnoses a model's
layers (weight spectra, train/test divergence of representations).
Estimators take numpy arrays or torch tensors (samples are rows; 1-D means one feature), return
an ``Estimate`` (a float with a standard error, pointwise values and the share of tied
neighbour distances), work in nats unless ``base=`` says otherwise, and run on the native C++
engine with a pure-torch reference path behind it (``backend=``, ``INFOLENS_BACKEND``).
"""

from . import curvature, infoplane, layers, linalg, trust
from ._backend import native_available
from .kernel import (alpha_req, diffusion_spectral_entropy, diffusion_spectral_mutual_info, matrix_entropy,
                     matrix_mutual_info, rank_me, total_correlation, vendi_score)
from .knn import (conditional_mutual_info, entropy, kl_divergence, mutual_info, mutual_info_batch,
                  nearest_neighbours, renyi_entropy)
from .result import Estimate

__version__ = "0.1.0"

__all__ = ["Estimate", "entropy", "renyi_entropy", "mutual_info", "mutual_info_batch",
           "conditional_mutual_info", "kl_divergence", "nearest_neighbours", "matrix_entropy",
           "matrix_mutual_info", "total_correlation", "vendi_score", "diffusion_spectral_entropy",
           "diffusion_spectral_mutual_info", "rank_me", "alpha_req", "native_available", "__version__"]

"""Kernel-matrix entropies of representations, exact where affordable and matrix-free beyond.

Estimators: ``matrix_entropy`` (matrix-based Renyi entropy of any order, joint entropies),
``matrix_mutual_info``, ``total_correlation``, ``vendi_score``, ``diffusion_spectral_entropy``,
``diffusion_spectral_mutual_info``, and the embedding spectra ``rank_me`` and ``alpha_req``.
Each docstring states the definition it uses, since the reference codes disagree.
"""

from .diffusion import diffusion_spectral_entropy, diffusion_spectral_mutual_info
from .embedding import alpha_req, rank_me
from .entropy import matrix_entropy, matrix_mutual_info, total_correlation, vendi_score
from .kernels import KERNELS, RULES

__all__ = ["matrix_entropy", "matrix_mutual_info", "total_correlation", "vendi_score",
           "diffusion_spectral_entropy", "diffusion_spectral_mutual_info", "rank_me", "alpha_req",
           "KERNELS", "RULES"]

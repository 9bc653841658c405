"""Curvature of a model's loss: batched Hessian / GGN / Fisher products and their spectra.

``CurvatureOperator`` applies the data-set curvature to a block of vectors in one pass over the
data; ``infolens.linalg`` estimates traces (Hutchinson, Hutch++), top eigenpairs (block
Lanczos) and spectral sums over it; ``curvature_spectrum`` keeps one SLQ run's nodes for the
density, log-determinants, effective dimension and the complexity curve; ``plots`` draws them.
"""

from .operator import KINDS, MODES, CurvatureOperator
from .spectrum import CurvatureSpectrum, curvature_spectrum

__all__ = ["CurvatureOperator", "CurvatureSpectrum", "curvature_spectrum", "KINDS", "MODES"]

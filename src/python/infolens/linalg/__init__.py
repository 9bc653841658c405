"""Krylov machinery shared by the kernel-entropy and curvature families.

Everything works on an ``Operator`` (a symmetric A applied to blocks V [n, b]) in float64 on the
operator's device: ``top_eigenpairs`` (block Lanczos), ``spectral_quadrature`` (deflated
stochastic Lanczos quadrature, from which any spectral sum tr f(A) follows with a standard
error), and the trace estimators ``hutchinson`` and ``hutchpp``.
"""

from .lanczos import Eigenpairs, top_eigenpairs
from .operator import Operator, as_operator
from .quadrature import Quadrature, spectral_quadrature
from .trace import hutchinson, hutchpp

__all__ = ["Operator", "as_operator", "Eigenpairs", "top_eigenpairs", "Quadrature", "spectral_quadrature",
           "hutchinson", "hutchpp"]

"""Krylov machinery shared by the kernel-entropy and curvature families.

Everything works on an ``Operator``, a symmetric A applied to blocks V [n, b], in float64 on the
operator's device, and is counted in operator calls, the cost that matters when one call is a
pass over a million samples or a batch of Hessian-vector products:

* ``top_eigenpairs``: block Lanczos with full reorthogonalisation and thick restart;
* ``spectral_quadrature``: stochastic Lanczos quadrature deflated by the top eigenpairs, from
  which any spectral sum tr f(A) follows with a standard error (``Quadrature.trace``);
* ``hutchinson``, ``hutchpp``: trace estimators in one and two calls; ``diagonal``: the
  diagonal's estimator in one call.
"""

from .lanczos import Eigenpairs, top_eigenpairs
from .operator import Operator, as_operator
from .quadrature import Quadrature, spectral_quadrature
from .trace import diagonal, hutchinson, hutchpp

__all__ = ["Operator", "as_operator", "Eigenpairs", "top_eigenpairs", "Quadrature", "spectral_quadrature",
           "hutchinson", "hutchpp", "diagonal"]

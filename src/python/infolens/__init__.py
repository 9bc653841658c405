"""infolens: what neural networks learn, measured in the units of information theory.

Estimators take numpy arrays or torch tensors (samples are rows; 1-D means one feature), return
an ``Estimate`` (a float with a standard error, pointwise values and the share of tied
neighbour distances), work in nats unless ``base=`` says otherwise, and run on the native C++
engine with a pure-torch reference path behind it (``backend=``, ``INFOLENS_BACKEND``).
"""

from ._backend import native_available
from .knn import (conditional_mutual_info, entropy, kl_divergence, mutual_info, mutual_info_batch,
                  nearest_neighbours, renyi_entropy)
from .result import Estimate

__version__ = "0.1.0"

__all__ = ["Estimate", "entropy", "renyi_entropy", "mutual_info", "mutual_info_batch",
           "conditional_mutual_info", "kl_divergence", "nearest_neighbours", "native_available", "__version__"]

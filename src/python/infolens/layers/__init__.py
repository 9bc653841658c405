"""Per-layer diagnostics of a PyTorch model.

``weight_spectra`` reads each nn.Linear / nn.Conv weight as a matrix [out, fan_in] and reports
its singular values, condition number, log-volume, effective rank and stable rank
(``spectrum_of`` does one tensor). ``representation_divergence`` estimates, at each layer, the
kNN divergence D(train || test) between the model's activations on training and on held-out
inputs: the "generalisation funnel", whose rise marks the layers that memorise.
"""

from .representations import representation_divergence
from .weights import WeightSpectrum, spectrum_of, weight_spectra

__all__ = ["weight_spectra", "spectrum_of", "WeightSpectrum", "representation_divergence"]

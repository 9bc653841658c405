"""The information plane over training: a tracker, its metrics on disk, figures and a report.

``InfoPlaneTracker`` (``tracker``) hooks a model's layers and estimates I(X;T) and I(T;Y) per
layer at each checkpoint, with binning (``binning``), kNN or matrix-based Renyi estimators, plus
kernel entropies and curvature summaries when asked; ``MetricStore`` (``store``) appends every
checkpoint to disk as it is computed; ``write_report`` (``report``) makes a folder of figures
(``plots``), metrics as CSV and JSON, and one self-contained HTML page.
"""

from .binning import binned_information
from .report import write_report
from .store import MetricStore
from .tracker import ESTIMATORS, InfoPlaneTracker

__all__ = ["InfoPlaneTracker", "MetricStore", "write_report", "binned_information", "ESTIMATORS"]

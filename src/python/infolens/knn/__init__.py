"""The k-nearest-neighbour estimator family: entropy, mutual information, divergence."""

from .divergence import kl_divergence
from .entropy import entropy, renyi_entropy
from .mutual_info import conditional_mutual_info, mutual_info, mutual_info_batch
from .search import nearest_neighbours

__all__ = ["entropy", "renyi_entropy", "mutual_info", "mutual_info_batch", "conditional_mutual_info",
           "kl_divergence", "nearest_neighbours"]

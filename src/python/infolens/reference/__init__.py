"""Pure-torch reference implementations of every native primitive.

Each computes exactly what the native engine computes (same keys, same strictness, same tie
rule: see docs/NATIVE_ABI.md) without native code, with memory bounded by chunking. They are
what the tests hold the native engines to, and the fallback where no native module is built.
"""

from .knn import ReferenceIndex

__all__ = ["ReferenceIndex"]

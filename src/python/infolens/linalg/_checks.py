"""Argument checks shared by the public functions of ``infolens.linalg``.

Every refusal is a ``ValueError`` that names the argument, as everywhere in infolens.
"""

from __future__ import annotations

import math
import numbers


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)

"""Seeded random blocks, and the mean and standard error over probes.

Random numbers are drawn on the CPU from a ``torch.Generator`` and then moved to the operator's
device, so a seed gives the same probes, and hence the same result, on every device. Each use of
randomness within one call (the start block of Lanczos, its refills, the probes of a trace
estimate) draws from its own stream of the seed, so that, e.g., the probes of a deflated
quadrature are not the start block of the Lanczos run that deflated it.
"""

from __future__ import annotations

import math

import torch

START, REFILL, PROBES, SKETCH = range(4)  # the streams


def generator(seed: int, stream: int) -> torch.Generator:
    # an odd 64-bit multiplier keeps (seed, stream) pairs apart for any seed a user would pick
    return torch.Generator().manual_seed((int(seed) * 0x9E3779B97F4A7C15 + stream) % 2**63)


def rademacher(n: int, b: int, gen: torch.Generator, device) -> torch.Tensor:
    """[n, b] random signs: the minimum-variance Hutchinson probe for a fixed matrix."""
    signs = torch.randint(0, 2, (n, b), generator=gen, dtype=torch.int8)
    return (signs.to(torch.float64) * 2 - 1).to(device)


def gaussian(n: int, b: int, gen: torch.Generator, device) -> torch.Tensor:
    """[n, b] standard normal: start and refill directions (rotation-invariant, so in general position)."""
    return torch.randn(n, b, generator=gen, dtype=torch.float64).to(device)


def mean_and_error(samples: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error of the mean) of per-probe estimates; the error of one probe is
    unknown (NaN)."""
    count = samples.numel()
    if count < 2:
        return float(samples.sum()), math.nan
    return float(samples.mean()), float(samples.std(correction=1)) / math.sqrt(count)

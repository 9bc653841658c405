"""What a trusted estimate costs: value + 95% interval + ladder + p-value from 200 permutations,
as a multiple of one plain estimate, measured side by side in one run.

    python bench/trust.py                    # N = 1e5 and 1e6 on the CPU (CUDA too, if present)
    python bench/trust.py --sizes 100000     # one size

Each case times the plain estimate, the ladder with its interval (``ci=0.95``: 4 halvings), the
permutation test (``n_permutations=200`` at the default statistic size) and everything in one
call. Issue 7 aims at 20x one estimate for everything together.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import infolens as il
from _harness import Report, timed


def cases(n: int, device: str):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 2))
    y = 0.6 * x + 0.8 * rng.standard_normal((n, 2))
    labels = rng.integers(0, 10, n)
    z = labels[:, None] * 0.3 + rng.standard_normal((n, 4))
    to = (lambda a: torch.as_tensor(a, device=device))
    yield "KSG-1, 2-D x 2-D", (lambda **kw: il.mutual_info(to(x), to(y), **kw))
    yield "Ross, 4-D x 10 labels", (lambda **kw: il.mutual_info(to(z), to(labels), **kw))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--permutations", type=int, default=200)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = Report()
    for device in devices:
        for n in args.sizes:
            for name, estimate in cases(n, device):
                plain, value = timed(estimate, repeat=3)
                ladder, _ = timed(lambda: estimate(ci=0.95))
                perms, _ = timed(lambda: estimate(n_permutations=args.permutations))
                full, result = timed(lambda: estimate(ci=0.95, n_permutations=args.permutations))
                lo, hi = result.interval
                report.add(case=name, device=device, N=f"{n:.0e}", **{
                    "plain s": f"{plain:.2f}", "ci + ladder": f"{ladder / plain:.1f}x",
                    f"{args.permutations} permutations": f"{perms / plain:.1f}x",
                    "everything s": f"{full:.2f}", "everything": f"{full / plain:.1f}x",
                    "value [95% interval]": f"{float(value):.4f} [{lo:.4f}, {hi:.4f}]",
                    "p": f"{result.p_value:.3g}", "settled": result.settled})
    report.finish()


if __name__ == "__main__":
    main()

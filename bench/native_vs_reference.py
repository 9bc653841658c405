"""The native engine against infolens's own torch reference path, same estimates, one run.

    python bench/native_vs_reference.py [--n 20000]

The reference path is exact brute force in chunks (O(N^2) work, O(N) memory), so N stays modest.
"""

from __future__ import annotations

import argparse

import numpy as np

import infolens as il
from _harness import Report, timed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    n = parser.parse_args().n
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4))
    y = 0.6 * x + 0.8 * rng.standard_normal((n, 4))
    labels = rng.integers(0, 10, n)
    wide = rng.standard_normal((n, 64)).astype(np.float32)
    cases = {
        "entropy, d=4, max-norm": lambda b: il.entropy(x, backend=b),
        "entropy, d=64, Euclidean, float32": lambda b: il.entropy(wide, metric="euclidean", backend=b),
        "KSG-1, 1-D x 1-D": lambda b: il.mutual_info(x[:, 0], y[:, 0], backend=b),
        "KSG-2, 2-D x 2-D": lambda b: il.mutual_info(x[:, :2], y[:, :2], method="ksg2", backend=b),
        "Ross, 4-D x 10 labels": lambda b: il.mutual_info(x, labels, backend=b),
        "Frenzel-Pompe CMI, 1-D x 1-D given 2-D": lambda b: il.conditional_mutual_info(x[:, 0], y[:, 0], x[:, 2:], backend=b),
    }
    report = Report()
    for what, call in cases.items():
        t_ref, ref = timed(lambda: call("reference"))
        t_nat, nat = timed(lambda: call("native"), repeat=3)
        report.add(estimate=what, N=n, **{"reference s": f"{t_ref:.2f}", "native s": f"{t_nat:.3f}",
                   "speed-up": f"{t_ref / t_nat:.0f}x", "|difference|": f"{abs(float(ref) - float(nat)):.1e}"})
    report.finish()

if __name__ == "__main__":
    main()

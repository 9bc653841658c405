"""Peak resident memory of one estimate at N = 1e6, d = 4, each in a fresh process.

    python bench/memory.py

Reports the process's peak RSS (ru_maxrss) after the estimate, and what the estimate added on
top of the interpreter, torch and the input array.
"""

from __future__ import annotations

import json
import subprocess
import sys

from _harness import Report

CHILD = """
import json, resource, numpy as np, infolens as il
rng = np.random.default_rng(0)
x = rng.standard_normal(({n}, 4))
y = 0.6 * x[:, :2] + 0.8 * rng.standard_normal(({n}, 2))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
est = {call}
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps([before, after, float(est)]))
"""

CALLS = {
    "entropy(x), d=4": "il.entropy(x)",
    "mutual_info(x, y, ksg1), 4-D x 2-D": "il.mutual_info(x, y)",
    "mutual_info(x, y, ksg2), 4-D x 2-D": "il.mutual_info(x, y, method='ksg2')",
}


def main(n: int = 1_000_000):
    report = Report()
    for what, call in CALLS.items():
        out = subprocess.run([sys.executable, "-c", CHILD.format(n=n, call=call)], check=True,
                             capture_output=True, text=True).stdout
        before, after, value = json.loads(out)
        report.add(estimate=what, N=f"{n:.0e}", **{"peak RSS MiB": f"{after / 1024:.0f}",
                   "added by the estimate MiB": f"{(after - before) / 1024:.0f}", "value": f"{value:.4f}"})
    report.finish()

if __name__ == "__main__":
    main()

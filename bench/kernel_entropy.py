"""Kernel-matrix entropies: exact path against the peers' way, matrix-free against exact, and the
large-N runs, in one run on one machine.

    python bench/kernel_entropy.py [--quick] [--only exact,accuracy,engine,large] [--large-n 50000]

* exact: infolens's exact path against the dense Gram + eigendecomposition the peers use
  (vendi-score's ``score_K``: numpy Gram + scipy.linalg.eigvalsh; repitl's torch.linalg.eigh),
  von Neumann entropy of a Gaussian kernel, N = 1e3..1e4.
* accuracy: matrix-free (deflated SLQ) and plain SLQ against the exact value on clustered and
  smooth data, N = 4e3..2e4.
* engine: one kernel-matrix x block product, native against the torch reference, with the
  arithmetic (operations per second) beside it.
* large: N = 5e4 (CPU) or 1e6 (GPU), d = 64: von Neumann (matrix-free) and alpha = 2 (exact
  streaming), time and peak memory.
"""

from __future__ import annotations

import argparse
import math
import resource

import numpy as np
import torch

import infolens as il
from _harness import Report, timed
from infolens import linalg
from infolens.kernel.kernels import factor
from infolens.kernel.matrix import KernelMatrix


def data(kind: str, n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "clustered":
        centres = 3.0 * rng.standard_normal((10, d))
        return centres[rng.integers(0, 10, n)] + 0.5 * rng.standard_normal((n, d))
    return rng.standard_normal((n, d))


def gaussian_gram(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.spatial.distance import cdist
    return np.exp(-cdist(x, x, "sqeuclidean") / (2 * sigma ** 2))


def exact_vs_peers(report: Report, sizes):
    from scipy.linalg import eigvalsh
    try:
        from vendi_score import vendi
    except ImportError:
        vendi = None
    for n in sizes:
        x = data("clustered", n, 32)
        sigma = 4.0

        def ours():
            return il.matrix_entropy(x, sigma=sigma, method="exact")

        def vendi_way():  # vendi-score: exp(S_1(K/N)) by scipy eigvalsh
            k = gaussian_gram(x, sigma)
            if vendi is not None:
                return math.log(vendi.score_K(k, q=1))
            w = eigvalsh(k / n)
            w = w[w > 0]
            return float(-(w * np.log(w)).sum())

        def repitl_way():  # repitl: torch Gram, eigh (values and vectors), keep lambda > 0
            t = torch.from_numpy(x)
            k = torch.exp(-torch.cdist(t, t).square() / (2 * sigma ** 2)) / n
            w = torch.linalg.eigh(k).eigenvalues
            w = w[w > 0]
            return float(-(w * w.log()).sum())

        repeat = 3 if n <= 2000 else 1  # small sizes: best of three, as the runs are short
        t_ours, v_ours = timed(ours, repeat)
        t_vendi, v_vendi = timed(vendi_way, repeat)
        t_repitl, v_repitl = timed(repitl_way, repeat)
        report.add(case="exact von Neumann, clustered d=32", N=n, **{
            "infolens exact s": f"{t_ours:.2f}", "vendi-score way s": f"{t_vendi:.2f}",
            "repitl way s": f"{t_repitl:.2f}", "vs vendi": f"{t_vendi / t_ours:.1f}x",
            "vs repitl": f"{t_repitl / t_ours:.1f}x",
            "max |difference|": f"{max(abs(float(v_ours) - v_vendi), abs(float(v_ours) - v_repitl)):.1e}"})


def xlogx(lam):
    keep = lam > 0
    return torch.where(keep, -lam * torch.log(torch.where(keep, lam, torch.ones_like(lam))), torch.zeros_like(lam))


def accuracy(report: Report, sizes):
    """infolens's matrix-free path (deflation + control variates) against exact, with plain SLQ
    and deflation alone run on the same operator for comparison (same probes and steps)."""
    for n in sizes:
        for kind in ("clustered", "smooth"):
            x = data(kind, n, 16, seed=n)
            t_exact, exact = timed(lambda: il.matrix_entropy(x, [1, 2], method="exact"))
            t_free, free = timed(lambda: il.matrix_entropy(x, [1, 2], method="matrix-free"))
            points = factor(torch.from_numpy(x), "gaussian", "silverman", name="x", seed=0, backend="auto")[:2]
            matrix = KernelMatrix([points])
            op = linalg.Operator(lambda v: matrix.matmul(v) / n, n)
            plain = linalg.spectral_quadrature(op, probes=32, steps=30).trace(xlogx)[0]
            deflated = linalg.spectral_quadrature(op, probes=32, steps=30, deflate=100).trace(xlogx)[0]
            truth = float(exact[0])
            report.add(case=f"matrix-free vs exact, {kind} d=16", N=n, **{
                "exact S1": f"{truth:.4f}", "exact s": f"{t_exact:.1f}",
                "infolens |error|": f"{abs(float(free[0]) - truth):.4f}", "stderr": f"{free[0].stderr:.4f}",
                "matrix-free s": f"{t_free:.1f}", "operator calls": free[0].details.get("operator_calls"),
                "plain SLQ |error|": f"{abs(plain - truth):.4f}",
                "deflation only |error|": f"{abs(deflated - truth):.4f}",
                "S2 |error|": f"{abs(float(free[1]) - float(exact[1])):.1e}"})


def engine(report: Report, n: int, device: str):
    for dtype in (torch.float32, torch.float64):
        x = torch.from_numpy(data("smooth", n, 64)).to(device, dtype)
        kind, points, _ = factor(x, "gaussian", 8.0, name="x", seed=0, backend="auto")
        v = torch.randn(n, 32, dtype=torch.float64, device=device)
        native = KernelMatrix([(kind, points)], backend="native")
        ref = KernelMatrix([(kind, points)], backend="reference")
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        t_nat, out_nat = timed(lambda: (native.matmul(v), sync())[0], repeat=3)
        t_ref, out_ref = timed(lambda: (ref.matmul(v), sync())[0])
        # pairs formed once on the CPU (symmetry), twice on the GPU; per pair 2d (distance) +
        # 2b (CPU: both directions) or 2b (GPU: one direction) + the exponential
        pairs = n * n / 2 if device == "cpu" else n * n
        flops = pairs * (2 * 64 + (4 if device == "cpu" else 2) * 32)
        report.add(case=f"K @ V, gaussian d=64 b=32, {str(dtype)[6:]}, {device}", N=n, **{
            "native s": f"{t_nat:.3f}", "reference s": f"{t_ref:.3f}", "speed-up": f"{t_ref / t_nat:.1f}x",
            "native GFLOP/s": f"{flops / t_nat / 1e9:.0f}",
            "max rel difference": f"{float((out_nat - out_ref).abs().max() / out_ref.abs().max()):.1e}"})


def large(report: Report, n: int, device: str, alone: bool):
    x = torch.from_numpy(data("clustered", n, 64, seed=1).astype(np.float32)).to(device)
    t_vn, vn = timed(lambda: il.matrix_entropy(x, 1, method="matrix-free"))
    t_s2, s2 = timed(lambda: il.matrix_entropy(x, 2, method="matrix-free"))
    # the process's peak includes whatever ran before: meaningful only when this part runs alone
    peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}" if alone else "run --only large"
    report.add(case=f"large N, clustered d=64 float32, {device}", N=n, **{
        "von Neumann": f"{float(vn):.4f} ± {vn.stderr:.4f}", "von Neumann s": f"{t_vn:.0f}",
        "S2 (streaming, exact)": f"{float(s2):.5f}", "S2 s": f"{t_s2:.1f}",
        "operator calls": vn.details.get("operator_calls"), "peak RSS MiB": peak,
        "input MiB": f"{x.numel() * 4 / 2 ** 20:.0f}"})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", default="exact,accuracy,engine,large")
    parser.add_argument("--large-n", type=int, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    parts = args.only.split(",")
    report = Report()
    if "exact" in parts:
        exact_vs_peers(report, [500, 1000] if args.quick else [1000, 2000, 4000, 10000])
    if "accuracy" in parts:
        accuracy(report, [1000] if args.quick else [4000, 8000, 16000])
    if "engine" in parts:
        engine(report, 2000 if args.quick else (20000 if device == "cpu" else 200000), device)
    if "large" in parts:
        large(report, args.large_n or (5000 if args.quick else (50000 if device == "cpu" else 1000000)), device,
              alone=parts == ["large"])
    report.finish()


if __name__ == "__main__":
    main()

"""The CUDA kNN engine on the GPU: the three targets of the CUDA kNN issue, each against the torch
reference path on the same GPU, with the roofline arithmetic beside each figure.

    python bench/knn_gpu.py [--quick] [--n 1000000] [--ref-n 100000] [--only ksg,max,euclidean,grid]

* ksg: ``infolens.mutual_info(x, y, k=4)`` (KSG-1: max-norm kNN in the joint space + two strict
  marginal counts) on CUDA tensors end to end, x and y 4-D each (joint d = 8), float32, N = 1e6.
  Target: < 1 s, and >= 10x the reference path (backend="reference") on the same GPU.
* max: ``nearest_neighbours(x, 4, metric="max")``, N = 1e6, d = 64, float32. Target: >= 50% of
  the FP32 arithmetic bound.
* euclidean: ``nearest_neighbours(x, 4, metric="euclidean")``, N = 1e6, d = 64, float32, against
  the GEMM-then-select design (FAISS's on the GPU, here in torch: chunked |q|^2 + |x|^2 - 2 q x^T
  with TF32 off, then topk) and the reference path. Target: >= 2x the GEMM path. The GEMM path's
  keys are approximate (cancellation in |q|^2 + |x|^2 - 2 q.x), infolens's are exact.
* grid: the grid path (algorithm="grid") against brute force at N = --n: max-norm kNN d = 8
  (k = 8), the KSG d = 4 marginal strict counts, and the KSG-1 core (joint d = 8 split 4 + 4),
  with equal answers checked and the fraction of the N^2 pairs the grid examines.

The reference path is brute force in torch, O(N^2) work in many kernel launches: above --ref-n
(default 1e5) it would run for many minutes, so it and infolens are both timed at N = --ref-n and
the ratio is stated at that N.

Roofline. Operations per ordered pair (the GPU forms every ordered pair once): max-norm d FADD +
d FMNMX (the |.| is a free operand modifier), Euclidean d FADD + d FMUL + d FADD (the engine forms
s + t*t without FMA, so no contraction). The floor time is ops / the FP32 lane rate measured here
(a large float32 torch.mm with TF32 off: FLOP/s / 2 = FMA lane instructions per second, the rate
at which any one-lane FP32 instruction issues). Bytes: inputs read once + outputs written once,
floored at a measured device-to-device copy bandwidth. Times: torch.cuda.synchronize around each
call, a warm-up first (at small N), the median of --repeat runs where a run is short.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import infolens as il
from _harness import Report
from infolens import _backend


def gpu_time(fn, repeat: int = 3, long_s: float = 3.0):
    """(median seconds over up to `repeat` synchronized calls, the last result); one call when the
    first took longer than long_s (the spread of long GPU runs is small)."""
    times, result = [], None
    for i in range(repeat):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if i == 0 and times[0] > long_s:
            break
    return statistics.median(times), result


def fp32_lane_rate(n: int = 8192) -> tuple[float, float]:
    """(FP32 lane instructions per second, TFLOP/s) from a float32 n^3 torch.mm without TF32."""
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a = torch.randn(n, n, device="cuda")
        b = torch.randn(n, n, device="cuda")
        torch.mm(a, b)
        t, _ = gpu_time(lambda: torch.mm(a, b), repeat=5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    flops = 2.0 * n**3 / t
    return flops / 2.0, flops / 1e12


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device bytes per second (read + write) of a large tensor copy."""
    src = torch.empty(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    t, _ = gpu_time(lambda: dst.copy_(src), repeat=5)
    return 2.0 * nbytes / t


class Roofline:
    def __init__(self, lane_rate: float, bandwidth: float):
        self.lane_rate, self.bandwidth = lane_rate, bandwidth

    def columns(self, seconds: float, ops: float, nbytes: float) -> dict:
        floor = ops / self.lane_rate
        return {"ops": f"{ops:.2e}", "arith floor s": f"{floor:.3f}",
                "% FP32 bound": f"{100 * floor / seconds:.0f}%",
                "bytes": f"{nbytes:.2e}", "memory floor s": f"{nbytes / self.bandwidth:.1e}"}


def correlated(n: int, d: int, seed: int, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, d, generator=g, device="cuda", dtype=torch.float64)
    y = 0.6 * x + 0.8 * torch.randn(n, d, generator=g, device="cuda", dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def subsample_check(points: torch.Tensor, p: float, dist: torch.Tensor, idx: torch.Tensor, rows: int = 256):
    """Distances (bitwise) and indices of a self-join on `rows` random queries against the
    reference path asked with queries= (which keeps the query itself, at key 0, in front)."""
    k = dist.shape[1]
    pick = torch.randperm(points.shape[0], device=points.device)[:rows]
    ref_keys, ref_idx = _backend.make_index(points, p, "reference").knn(k + 1, points[pick])
    ref_dist = ref_keys if p == math.inf else ref_keys.sqrt()  # sqrt is correctly rounded everywhere
    self_first = ref_idx[:, 0] == pick  # no exact duplicate of smaller index ahead of the query
    keys_equal = torch.equal(ref_dist[:, 1:], dist[pick])
    idx_equal = torch.equal(ref_idx[self_first, 1:], idx[pick][self_first])
    return f"{rows} queries vs reference: distances {'equal' if keys_equal else 'DIFFER'}, indices {'equal' if idx_equal else 'DIFFER'}"


def gemm_knn(x: torch.Tensor, k: int, block: int = 4096):
    """The GEMM-then-select design (FAISS GPU brute force): squared distances as
    |q|^2 + |x|^2 - 2 q x^T per block of queries (TF32 off), self excluded, then topk."""
    n = x.shape[0]
    norms = (x * x).sum(1)
    keys = torch.empty(n, k, dtype=x.dtype, device=x.device)
    idx = torch.empty(n, k, dtype=torch.int64, device=x.device)
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for r0 in range(0, n, block):
            q = x[r0 : r0 + block]
            rows = torch.arange(q.shape[0], device=x.device)
            d2 = torch.addmm(norms[None, :], q, x.T, alpha=-2.0)
            d2 += norms[r0 : r0 + block, None]
            d2[rows, rows + r0] = math.inf
            vals, cols = torch.topk(d2, k, dim=1, largest=False)
            keys[r0 : r0 + block] = vals.clamp_min_(0)
            idx[r0 : r0 + block] = cols
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    return keys, idx


def ksg(report: Report, roof: Roofline, n: int, ref_n: int):
    k, dx = 4, 4
    x, y = correlated(n, dx, seed=1)
    il.mutual_info(x[:2000], y[:2000], k=k)  # warm-up
    t, est = gpu_time(lambda: il.mutual_info(x, y, k=k))
    # kNN of k + 1 in the joint space (d = 8) and a strict count in each marginal (d = 4), every
    # ordered pair: (8 + 4 + 4) FADD + as many FMNMX.
    ops = n * (n - 1) * 2.0 * (2 * dx + dx + dx)
    nbytes = 2 * n * dx * 4 + n * 8  # x, y read; the float64 pointwise terms written
    nr = min(n, ref_n)
    xr, yr = x[:nr].contiguous(), y[:nr].contiguous()
    t_small, small = gpu_time(lambda: il.mutual_info(xr, yr, k=k))
    il.mutual_info(xr[:2000], yr[:2000], k=k, backend="reference")  # warm-up
    t_ref, ref = gpu_time(lambda: il.mutual_info(xr, yr, k=k, backend="reference"), repeat=1)
    joint = torch.cat([x, y], 1)
    keys, idx = _backend.make_index(joint, math.inf).knn(k + 1)
    agree = (f"MI at N={nr}: {float(small):.6f} vs reference {float(ref):.6f} "
             f"(|diff| {abs(float(small) - float(ref)):.1e}); joint kNN at N={n}: "
             + subsample_check(joint, math.inf, keys, idx))
    report.add(case="KSG-1 mutual_info, max-norm, x 4-D, y 4-D, float32, k=4", N=n,
               **{"infolens s": f"{t:.3f}", "at ratio N": nr, "infolens s at ratio N": f"{t_small:.4f}",
                  "reference s at ratio N": f"{t_ref:.2f}", "speed-up": f"{t_ref / t_small:.0f}x",
                  **roof.columns(t, ops, nbytes),
                  "target": "< 1 s and >= 10x", "met": "yes" if t < 1.0 and t_ref / t_small >= 10 else "NO",
                  "agreement": agree, "value": f"{float(est):.5f} nats"})


def knn_case(report: Report, roof: Roofline, n: int, ref_n: int, metric: str):
    k, d = 4, 64
    p = math.inf if metric == "max" else 2.0
    x = correlated(n, d, seed=2)[0]
    il.nearest_neighbours(x[:4096], k, metric=metric)  # warm-up
    t, (dist, idx) = gpu_time(lambda: il.nearest_neighbours(x, k, metric=metric))
    ops = n * (n - 1) * float(d) * (2 if metric == "max" else 3)
    nbytes = n * d * 4 + n * k * (4 + 8)
    agree = subsample_check(x, p, dist, idx)
    nr = min(n, ref_n)
    xr = x[:nr].contiguous()
    t_small, _ = gpu_time(lambda: il.nearest_neighbours(xr, k, metric=metric))
    il.nearest_neighbours(xr[:2000], k, metric=metric, backend="reference")  # warm-up
    t_ref, _ = gpu_time(lambda: il.nearest_neighbours(xr, k, metric=metric, backend="reference"), repeat=1)
    row = {"infolens s": f"{t:.3f}", "at ratio N": nr, "infolens s at ratio N": f"{t_small:.4f}",
           "reference s at ratio N": f"{t_ref:.2f}", "speed-up": f"{t_ref / t_small:.0f}x",
           **roof.columns(t, ops, nbytes)}
    floor = ops / roof.lane_rate
    if metric == "max":
        row.update(target=">= 50% of FP32 bound", met="yes" if floor / t >= 0.5 else "NO",
                   agreement=agree, value="")
        report.add(case="kNN max-norm, d=64, float32, k=4", N=n, **row)
        return
    gemm_knn(x[:8192], k)  # warm-up
    t_gemm, (gkeys, gidx) = gpu_time(lambda: gemm_knn(x, k))
    same = float((gidx == idx).double().mean())
    keys = dist.square()
    rel = float(((gkeys - keys).abs() / keys.clamp_min(1e-30)).max())
    row.update(target=">= 2x the GEMM path", met="yes" if t_gemm / t >= 2 else "NO",
               agreement=f"{agree}; GEMM path: {t_gemm:.3f} s ({t_gemm / t:.1f}x infolens), "
                         f"{100 * same:.3f}% indices equal, keys max rel error {rel:.1e} (approximate)",
               value="")
    report.add(case="kNN Euclidean, d=64, float32, k=4", N=n, **row)


def _grid_calls(points: torch.Tensor, p: float):
    """(knn(k), count(radius, strict)) callables of the CUDA index over `points` for "brute" and
    "grid", plus a pairs counter for the grid: {algorithm: (knn, count)}, pairs tensor."""
    calls = {}
    for algorithm in ("brute", "grid"):
        index = _backend.make_index(points, p, "auto", algorithm)
        calls[algorithm] = (index.knn, index.count)
    return calls


def _grid_pairs(points: torch.Tensor, p: float, k: int | None = None, radius=None, strict=True) -> float:
    """The fraction of the N^2 (query, point) pairs the grid path examines (its kernels' own count)."""
    cuda = _backend._native_cuda
    pts, ld = _backend._rows(points)
    n, d = pts.shape
    pairs = torch.zeros(1, dtype=torch.int64, device=pts.device)
    dtype = _backend.CUDA_DTYPES[pts.dtype]
    launch = _backend.cuda_launch(pts.device)
    if k is not None:
        keys = torch.empty(n, k, dtype=pts.dtype, device=pts.device)
        idx = torch.empty(n, k, dtype=torch.int64, device=pts.device)
        cuda.knn_grid(pts.data_ptr(), n, d, ld, 0, n, d, dtype, p, k, keys.data_ptr(), idx.data_ptr(),
                      *launch, pairs=pairs.data_ptr())
    else:
        out = torch.empty(n, dtype=torch.int64, device=pts.device)
        cuda.knn_count_grid(pts.data_ptr(), n, d, ld, 0, n, d, dtype, p, radius.data_ptr(), strict,
                            out.data_ptr(), *launch, pairs=pairs.data_ptr())
    torch.cuda.synchronize()
    return float(pairs.item()) / (float(n) * float(n))


def grid_case(report: Report, n: int):
    """The grid path against brute force at N = n: max-norm kNN d = 8 (k = 8), the KSG d = 4
    marginal strict counts, and the KSG-1 core (joint kNN of k + 1 = 5 in d = 8 split 4 + 4, two
    strict marginal counts, the digamma sum); equal answers asserted, the pairs the grid examines
    given as a fraction of N^2 (the most the grid can gain on brute force)."""
    if not hasattr(_backend._native_cuda, "knn_grid"):
        print("grid: this build has no knn_grid; skipped")
        return
    x, y = correlated(n, 4, seed=3)
    joint = torch.cat([x, y], 1)
    # kNN, max-norm, d = 8, k = 8.
    calls = _grid_calls(joint, math.inf)
    calls["grid"][0](8)  # warm-up (and the first-call costs of cub's temporaries)
    t_b, (kb, ib) = gpu_time(lambda: calls["brute"][0](8))
    t_g, (kg, ig) = gpu_time(lambda: calls["grid"][0](8))
    same = torch.equal(kb, kg) and torch.equal(ib, ig)
    frac = _grid_pairs(joint, math.inf, k=8)
    report.add(case="grid vs brute: kNN max-norm, d=8, k=8, float32", N=n,
               **{"brute s": f"{t_b:.3f}", "grid s": f"{t_g:.3f}", "speed-up": f"{t_b / t_g:.1f}x",
                  "grid pairs / N^2": f"{frac:.4f}", "equal": "yes" if same else "NO"})
    # KSG-1 marginal counts at the joint k = 4 radii (the (k+1)-search's k-th key).
    k = 4
    keys5, _ = calls["brute"][0](k + 1)
    eps = keys5[:, k - 1].contiguous()
    for name, part in (("x", joint[:, :4]), ("y", joint[:, 4:])):
        c = _grid_calls(part, math.inf)
        c["grid"][1](eps, True)  # warm-up
        t_b, nb = gpu_time(lambda: c["brute"][1](eps, True))
        t_g, ng = gpu_time(lambda: c["grid"][1](eps, True))
        frac = _grid_pairs(part, math.inf, radius=eps, strict=True)
        report.add(case=f"grid vs brute: KSG strict count, marginal {name} d=4 (column block), float32", N=n,
                   **{"brute s": f"{t_b:.3f}", "grid s": f"{t_g:.3f}", "speed-up": f"{t_b / t_g:.1f}x",
                      "grid pairs / N^2": f"{frac:.4f}", "equal": "yes" if torch.equal(nb, ng) else "NO"})

    # The KSG-1 core end to end.
    def ksg1(algorithm):
        kk, _ = _backend.make_index(joint, math.inf, "auto", algorithm).knn(k + 1)
        e = kk[:, k - 1].contiguous()
        n_x = _backend.make_index(joint[:, :4], math.inf, "auto", algorithm).count(e, True)
        n_y = _backend.make_index(joint[:, 4:], math.inf, "auto", algorithm).count(e, True)
        dg = lambda t: torch.special.digamma(torch.as_tensor(t, dtype=torch.float64))  # noqa: E731
        return (dg(k) + dg(n) - dg(n_x + 1) - dg(n_y + 1)).mean()

    ksg1("grid")
    t_b, vb = gpu_time(lambda: ksg1("brute"))
    t_g, vg = gpu_time(lambda: ksg1("grid"))
    report.add(case="grid vs brute: KSG-1 core (joint kNN k+1=5 d=8 + two d=4 counts), float32", N=n,
               **{"brute s": f"{t_b:.3f}", "grid s": f"{t_g:.3f}", "speed-up": f"{t_b / t_g:.1f}x",
                  "target": "< 1 s", "met": "yes" if t_g < 1.0 else "NO",
                  "equal": "yes" if float(vb) == float(vg) else "NO", "value": f"{float(vg):.5f} nats"})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1e5 everywhere, reference at 2e4: a smoke run")
    parser.add_argument("--n", type=int, default=None, help="N for every case (default 1e6, 1e5 with --quick)")
    parser.add_argument("--ref-n", type=int, default=None,
                        help="largest N the reference path is timed at (default 1e5, 2e4 with --quick)")
    parser.add_argument("--only", default="ksg,max,euclidean,grid")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("knn_gpu.py needs a CUDA device")
    if not _backend.cuda_native("knn"):
        raise SystemExit("infolens._native_cuda has no kNN engine in this install (or sees no device)")
    n = args.n or (100_000 if args.quick else 1_000_000)
    ref_n = args.ref_n or (20_000 if args.quick else 100_000)
    info = _backend._native_cuda.device_info(torch.cuda.current_device())
    print(f"device: {info['name']} (sm_{info['compute_capability'][0]}{info['compute_capability'][1]}, "
          f"{info['multiprocessors']} SMs, {info['total_memory'] / 2**30:.0f} GiB)")
    lane_rate, tflops = fp32_lane_rate()
    bandwidth = copy_bandwidth()
    print(f"measured FP32 rate: {tflops:.1f} TFLOP/s in a float32 8192^3 torch.mm without TF32 "
          f"= {lane_rate / 1e12:.1f} T FP32 lane instructions/s; device copy bandwidth {bandwidth / 1e9:.0f} GB/s\n")
    roof = Roofline(lane_rate, bandwidth)
    report = Report()
    parts = args.only.split(",")
    if "ksg" in parts:
        ksg(report, roof, n, ref_n)
    if "max" in parts:
        knn_case(report, roof, n, ref_n, "max")
    if "euclidean" in parts:
        knn_case(report, roof, n, ref_n, "euclidean")
    if "grid" in parts:
        grid_case(report, n)
    report.finish()


if __name__ == "__main__":
    main()

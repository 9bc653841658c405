"""The fused softmax cross-entropy head curvature product against the eager torch path.

    python bench/head_kernel.py [--quick] [--device cpu|cuda|all] [--sizes T,V,d,b ...]

For logits z = h W^T + c, p = softmax(z) and b tangents (dh, dW, dc), both compute
u_j = w_t (p * dz_j - p (p . dz_j)) with dz_j = dh_j W^T + h dW_j^T + dc_j and the pullbacks
out_dh = u W, out_dW = u^T h, out_dc = sum_t u, in float32:

* fused: infolens._native.softmax_ce_ggn (CPU) / infolens._native_cuda.softmax_ce_ggn (GPU), through
  infolens.curvature.head.softmax_ce_ggn as the curvature operator calls them;
* eager: the torch code a user would write, the [b, T, V] tangent and u materialised (`eager`).

Each CPU variant runs in a fresh process; its peak memory is the rise of ru_maxrss over the
inputs (outputs and everything else the computation holds). On a GPU it is the rise of
torch.cuda.max_memory_allocated over the inputs. The answers are compared (max relative
difference per output, relative to the largest entry of the eager answer), and each against
float64 on the rows of out_dh of the first 8 tokens (which depend on those tokens alone: the
torch reference, infolens.reference.head, in float64 on them). The default sizes
are the issue's T = 4096, V = 32000, d = 512, b = 16 and, because eager needs about 4 [b, T, V]
float32 arrays (34 GB there), a T = 1024 size whose eager path fits in a small machine's memory;
a size whose eager path would not fit in the available memory is run fused only and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from _harness import Report
from infolens.curvature import head

FULL = [(4096, 32000, 512, 16), (1024, 32000, 512, 16)]
QUICK = [(512, 8000, 256, 8)]
OUTPUTS = ("out_dh", "out_dw", "out_dbias")


def inputs(T, V, d, b, device="cpu", seed=0):
    """float32 inputs drawn in place (no temporaries, so the memory baseline is the inputs)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        x = torch.empty(*shape, device=device)
        torch.randn(*shape, generator=g, out=x, device=device)
        return x.mul_(scale)

    return dict(h=randn(T, d), w=randn(V, d, scale=3 / d**0.5), bias=randn(V),
                token_weights=torch.full((T,), 1 / T, device=device),
                dh=randn(b, T, d), dw=randn(b, V, d, scale=d**-0.5), dbias=randn(b, V))


def eager(h, w, bias, token_weights, dh, dw, dbias):
    """The GGN product of the head as a torch user writes it."""
    p = torch.softmax(h @ w.T + bias, dim=-1)  # [T, V]
    dz = torch.einsum("btd,vd->btv", dh, w) + torch.einsum("td,bvd->btv", h, dw) + dbias[:, None, :]
    s = (p * dz).sum(-1, keepdim=True)
    u = token_weights[:, None] * p * (dz - s)  # [b, T, V]
    return u @ w, torch.einsum("btv,td->bvd", u, h), u.sum(1)


def fused(h, w, bias, token_weights, dh, dw, dbias):
    """The native engine of the inputs' device, as the curvature operator calls it (imported at the
    top, so that the import stays out of the measured time and memory)."""
    return head.softmax_ce_ggn("native", h, w, bias, token_weights, dh, dw, dbias)


def float64_error(x, out_dh, rows=8):
    """Max error of out_dh on the first `rows` tokens against float64, relative to its largest entry."""
    from infolens.reference.head import softmax_ce_ggn

    sub = dict(x, h=x["h"][:rows], token_weights=x["token_weights"][:rows], dh=x["dh"][:, :rows])
    want = softmax_ce_ggn(**{k: v.double() for k, v in sub.items()})[0]
    return float((out_dh[:, :rows].double() - want).abs().max() / want.abs().max())


def child(variant, size, save):
    """One CPU variant in this (fresh) process: prints seconds, the peak RSS rise in KiB and the
    float64 spot check."""
    x = inputs(*size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    outs = (fused if variant == "fused" else eager)(**x)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, o in zip(OUTPUTS, outs):
        np.save(os.path.join(save, f"{variant}_{name}.npy"), o.numpy())
    print(json.dumps(dict(seconds=seconds, added_kib=after - before, error=float64_error(x, outs[0]))))


def eager_bytes(T, V, d, b):
    """About what eager holds at its peak: four [b, T, V] float32 arrays, and the outputs."""
    return 4 * 4 * b * T * V + 4 * b * (T + V) * d


def available_bytes():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


def max_relative_difference(a, b):
    return max(float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)) for x, y in zip(a, b))


def row(report, device, size, fused, eager_result, diff):
    """fused and eager_result: (seconds, peak bytes added, float64 spot error) or None."""
    T, V, d, b = size
    t_f, m_f, err_f = fused
    cells = dict(device=device, size=f"T={T} V={V} d={d} b={b}", **{"fused s": f"{t_f:.2f}",
                 "fused peak MiB": f"{m_f / 2**20:.0f}"})
    if eager_result is None:
        cells.update({"eager s": "n/a", "eager peak MiB": f"> {eager_bytes(*size) / 2**20:.0f} (does not fit)",
                      "speed-up": "", "memory ratio": "", "fused vs eager": "", "fused err f64": f"{err_f:.1e}",
                      "eager err f64": ""})
    else:
        t_e, m_e, err_e = eager_result
        cells.update({"eager s": f"{t_e:.2f}", "eager peak MiB": f"{m_e / 2**20:.0f}", "speed-up": f"{t_e / t_f:.2f}x",
                      "memory ratio": f"{m_e / max(m_f, 1):.1f}x", "fused vs eager": f"{diff:.1e}",
                      "fused err f64": f"{err_f:.1e}", "eager err f64": f"{err_e:.1e}"})
    report.add(**cells)


def run_cpu(report, size):
    results = {}
    with tempfile.TemporaryDirectory() as save:
        variants = ["fused"]
        if eager_bytes(*size) < 0.8 * available_bytes():
            variants.append("eager")
        for variant in variants:
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--sizes", ",".join(map(str, size)),
                                  "--save", save], check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results[variant] = (r["seconds"], r["added_kib"] * 1024, r["error"])
        diff = None
        if "eager" in results:
            load = lambda v: [np.load(os.path.join(save, f"{v}_{n}.npy")) for n in OUTPUTS]  # noqa: E731
            diff = max_relative_difference(load("fused"), load("eager"))
    row(report, f"cpu ({torch.get_num_threads()} threads)", size, results["fused"], results.get("eager"), diff)


def run_cuda(report, size):
    x = inputs(*size, device="cuda")
    results, answers = {}, {}
    for name, fn in (("eager", eager), ("fused", fused)):
        fn(**inputs(2, 3, 4, 1, device="cuda"))  # warm up (cuBLAS handles, module load)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        try:
            start = time.perf_counter()
            outs = fn(**x)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        except torch.cuda.OutOfMemoryError:
            results[name] = None
            continue
        results[name] = (seconds, torch.cuda.max_memory_allocated() - base, float64_error(x, outs[0]))
        answers[name] = [o.cpu().numpy() for o in outs]
        del outs
    diff = max_relative_difference(answers["fused"], answers["eager"]) if results["eager"] else None
    row(report, torch.cuda.get_device_name(), size, results["fused"], results["eager"], diff)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"the small size {QUICK[0]}")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--sizes", nargs="*", help="T,V,d,b sizes instead of the defaults")
    parser.add_argument("--child", choices=["fused", "eager"], help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes] if args.sizes else (QUICK if args.quick else FULL)
    if args.child:
        return child(args.child, sizes[0], args.save)
    report = Report()
    for size in sizes:
        if args.device in ("cpu", "all"):
            run_cpu(report, size)
        if args.device in ("cuda", "all") and torch.cuda.is_available():
            run_cuda(report, size)
    report.finish()
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other work on the "
          f"machine slows both variants)" if hasattr(os, "getloadavg") else "")


if __name__ == "__main__":
    main()

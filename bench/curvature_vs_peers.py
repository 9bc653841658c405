"""infolens's curvature estimates against PyHessian and curvlinops: data passes and wall time.

    python bench/curvature_vs_peers.py --threads 1   # MLP (N = 2048) and CNN (N = 1024): about 35 minutes
    python bench/curvature_vs_peers.py --quick       # N / 4, fewer probes and steps: checks the script (5 minutes)

Columns "PyHessian / this": PyHessian's passes (seconds) over the row's, so above 1 is fewer
passes (less time) than PyHessian's method on the same task.

What is compared. For each model, the Hessian of the mean cross-entropy over the whole data set
(float32, CPU, model in eval mode), at parameters after a short training on the synthetic task
(so that the spectrum has its outliers), three estimates:

1. trace, with the same number M of Rademacher probe vectors for every tool: PyHessian's
   ``trace(maxIter=M, tol=0)`` (Hutchinson; tol = 0 so that it uses all M rather than stopping
   when the running mean moves less than tol), curvlinops' ``hutchinson_trace`` and
   ``hutchpp_trace`` with M matvecs, infolens's ``hutchinson(op, M)`` and ``hutchpp(op, M)``;
2. the top-5 eigenvalues at relative tolerance 1e-3: PyHessian's ``eigenvalues(top_n=5,
   tol=1e-3)`` (power iteration with deflation; its test is the relative change of the
   eigenvalue, and it finds the largest in magnitude), scipy ``eigsh(A.to_scipy(), k=5,
   which="LA", tol=1e-3)`` on curvlinops' operator as its docs do (ARPACK: residual <= tol |theta|),
   infolens's ``top_eigenpairs(op, 5, tol=1e-3)`` (block Lanczos: residual <= tol max |theta|).
   An untimed reference (block Lanczos at tol 1e-6) gives each row's largest relative deviation;
3. the spectral density from 8 starts x 64 Lanczos steps: PyHessian's ``density(iter=64,
   n_v=8)`` (full reorthogonalisation, starts one after another), curvlinops'
   ``lanczos_approximate_spectrum(ncv=64, num_repeats=8)`` (Papyan 2020, no reorthogonalisation;
   its eigsh spectrum boundaries included), infolens's ``curvature_spectrum(op, probes=8,
   steps=64)`` (block SLQ: all starts advance together). As agreement checks each row reports
   the trace its quadrature implies (P times the mean of sum_j w_j theta_j; for curvlinops, whose
   function returns only the broadened density, P times its mean) and its largest node (for
   curvlinops, the eigsh upper boundary).

PyHessian 0.1 (the PyPI release) calls ``torch.eig``, which current torch has removed, at the end
of ``density``: the bench runs PyHessian's own code with ``torch.eig`` replaced, for that call
only, by ``torch.linalg.eigh`` of the same symmetric tridiagonal T (returned in the old layout).
Nothing else of PyHessian is changed.

How passes are counted. Every tool reads the data only through one ``CountingLoader``, a list of
(inputs, targets) batches that counts the batches it yields; passes = batches yielded / batches
per pass, so a pass is counted the same way for every tool, whatever it does inside. Passes spent
constructing an operator are not counted: curvlinops gets ``num_data`` and
``check_deterministic=False`` (otherwise two gradient passes and a matvec check, plus one pass to
count the data), infolens counts the samples once at construction, and the counter is reset after.

Timing: each tool and task runs side by side in one process, task by task; a run under 5 s is
repeated twice more and the best time kept; ``--rounds N`` runs every tool's task N times, every
other round in reverse order, and keeps each one's best (a shared machine's speed drifts). The
load average of the machine is printed at the start and end, since other processes can share
it; ``--threads 1`` keeps the timings steady when they do (with two OpenMP threads on two
shared cores, a descheduled thread stalls every parallel region: one double-backward pass
measured 0.02 s alone and 2.8 s under load, against 0.031 s either way with one thread). Infolens runs with its defaults
(``mode="auto"``, which times every way on the first batch; for these two nn.Sequential models
it picks the layer-by-layer sweeps, ``mode="sequential"``) and once more with
``mode="reverse-over-reverse", chunk=1`` (autograd: one gradient graph per batch, reused for each
column); the untimed top-5 reference uses the latter.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import infolens.curvature as ilc
import infolens.linalg as ill
from _harness import Report, machine, timed

warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit.script notices from curvlinops' imports
warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")  # PyHessian's own call

TOL = 1e-3         # top-5: every tool's own relative tolerance
REFERENCE_TOL = 1e-6
REPEAT_BELOW = 5.0  # seconds: shorter runs are repeated, best of three


# ---------------------------------------------------------------- data, models, counting

class CountingLoader:
    """The data set as a list of (inputs, targets) batches, counting the batches it yields."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        self.n_samples = len(x)
        self.yielded = 0

    def __iter__(self):
        for batch in self.batches:
            self.yielded += 1
            yield batch

    def __len__(self):
        return len(self.batches)

    @property
    def passes(self) -> float:
        return self.yielded / len(self.batches)


def synthetic(shape, n, rng: torch.Generator):
    """Ten classes: a smooth random pattern per class plus noise, 10% of labels flipped."""
    means = torch.randn(10, shape[0], *(max(1, s // 4) for s in shape[1:]), generator=rng)
    if len(shape) > 1:
        means = F.interpolate(means, size=shape[1:], mode="bilinear", align_corners=False)
    y = torch.randint(0, 10, (n,), generator=rng)
    x = 0.7 * means[y] + torch.randn(n, *shape, generator=rng)
    flip = torch.rand(n, generator=rng) < 0.1
    y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=rng)
    return x, y


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(),
                         nn.Linear(64, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 10))


def trained(model, x, y, epochs: int, seed: int):
    """A few epochs of Adam, so that the Hessian is that of a partly fitted model."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


# ---------------------------------------------------------------- helpers

def measure(loader: CountingLoader, fn):
    """(passes of one call, best seconds, result): one call, repeated twice more if short."""
    loader.yielded = 0
    seconds, result = timed(fn)
    passes = loader.passes
    if seconds < REPEAT_BELOW:
        again, result = timed(fn, repeat=2)
        seconds = min(seconds, again)
    return passes, seconds, result


def quadrature_summary(n_params, nodes, weights):
    """(trace, top node) of per-start Gauss rules (unit start vectors): P mean_k sum_j w theta."""
    nodes, weights = np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float)
    return n_params * float(np.mean((weights * nodes).sum(axis=1))), float(nodes[weights > 0].max())


@contextlib.contextmanager
def torch_eig_for_pyhessian():
    """``torch.eig(T, eigenvectors=True)`` as PyHessian 0.1 expects it (eigenvalues [n, 2] as
    real and imaginary parts, eigenvectors as columns), from eigh of its symmetric T, where
    torch has removed torch.eig; untouched where torch.eig still works."""
    try:
        torch.eig(torch.eye(2), eigenvectors=True)
        yield False
        return
    except (RuntimeError, AttributeError):
        pass
    original = getattr(torch, "eig", None)

    def eig(t, eigenvectors=False):
        values, vectors = torch.linalg.eigh(t)
        return torch.stack([values, torch.zeros_like(values)], dim=1), vectors

    torch.eig = eig
    try:
        yield True
    finally:
        if original is None:
            del torch.eig
        else:
            torch.eig = original


def fmt_values(values):
    return ", ".join(f"{v:.4g}" for v in values)


# ---------------------------------------------------------------- the tools
# Each returns {task: [(method, fn)]}; fn() returns (summary string, numbers for agreement).

def pyhessian_tool(model, loader, settings):
    """PyHessian 0.1: one full data pass (forward, backward with create_graph, then the
    Hessian-vector product by double backward, batch by batch) per vector."""
    from pyhessian import hessian

    h = hessian(model, nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
    m, starts, steps = settings["probes"], settings["starts"], settings["steps"]

    def trace():
        torch.manual_seed(1)
        samples = np.asarray(h.trace(maxIter=m, tol=0.0))
        return samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))

    def top5():
        torch.manual_seed(2)
        values, _ = h.eigenvalues(maxIter=100, tol=TOL, top_n=5)
        return sorted(values, reverse=True)

    def density():
        torch.manual_seed(3)
        with torch_eig_for_pyhessian():
            nodes, weights = h.density(iter=steps, n_v=starts)
        return quadrature_summary(settings["P"], nodes, weights)

    return {"trace": [(f"Hutchinson, {m} probes, one pass each", trace)],
            "top-5": [(f"power iteration + deflation, tol {TOL:g}", top5)],
            "density": [(f"SLQ {starts} starts x {steps} steps, one after another (torch.eig -> eigh)", density)]}


def curvlinops_tool(model, loader, settings):
    """curvlinops 3.0.1: ``HessianLinearOperator @ M`` is one data pass for all columns of M
    (vmap over them); scipy's eigsh and its Lanczos density pass one vector at a time."""
    from curvlinops import HessianLinearOperator, hutchinson_trace, hutchpp_trace, lanczos_approximate_spectrum
    from curvlinops.papyan2020traces.spectrum import approximate_boundaries
    from scipy.sparse.linalg import eigsh

    params = [p for p in model.parameters() if p.requires_grad]
    a = HessianLinearOperator(model, nn.CrossEntropyLoss(), params, loader,
                              check_deterministic=False, num_data=loader.n_samples)
    m, starts, steps = settings["probes"], settings["starts"], settings["steps"]

    def trace(estimator):
        torch.manual_seed(1)
        return float(estimator(a, m)), None

    def top5():
        np.random.seed(2)
        values = eigsh(a.to_scipy(), k=5, which="LA", tol=TOL, return_eigenvectors=False)
        return sorted(values.tolist(), reverse=True)

    def density():
        torch.manual_seed(3)
        np.random.seed(3)
        # what lanczos_approximate_spectrum does when not given boundaries, called here to report them
        boundaries = approximate_boundaries(a, tol=1e-2)
        grid, dens = lanczos_approximate_spectrum(a, steps, num_repeats=starts, boundaries=boundaries)
        grid, dens = grid.double().numpy(), dens.double().numpy()
        mean = np.trapezoid(grid * dens, grid) / np.trapezoid(dens, grid)
        return settings["P"] * float(mean), float(boundaries[1])

    return {"trace": [(f"hutchinson_trace, {m} matvecs", lambda: trace(hutchinson_trace)),
                      (f"hutchpp_trace, {m} matvecs", lambda: trace(hutchpp_trace))],
            "top-5": [(f"scipy eigsh(LA) on to_scipy(), tol {TOL:g}", top5)],
            "density": [(f"lanczos_approximate_spectrum {starts} x {steps}, + eigsh boundaries", density)]}


def infolens_tool(model, loader, settings, mode="auto", chunk=None):
    """infolens: ``CurvatureOperator(V [P, b])`` is one data pass for all b columns; Hutchinson in
    one pass, Hutch++ in two, block Lanczos one pass per block of 8, block SLQ ``steps`` passes."""
    op = ilc.CurvatureOperator(model, nn.CrossEntropyLoss(), loader, kind="hessian", mode=mode, chunk=chunk)
    m, starts, steps = settings["probes"], settings["starts"], settings["steps"]

    def top5():
        eig = ill.top_eigenpairs(op, 5, tol=TOL, seed=2)
        return eig.values.tolist()

    def density():
        spec = ilc.curvature_spectrum(op, probes=starts, steps=steps, seed=3)
        q = spec.quadrature  # weights carry ||z||^2 = P (unnormalised Rademacher probes)
        return spec.trace()[0], float(q.nodes[q.weights > 0].max())

    return {"trace": [(f"hutchinson, {m} probes", lambda: ill.hutchinson(op, m, seed=1)),
                      (f"hutchpp, {m} matvecs", lambda: ill.hutchpp(op, m, seed=1))],
            "top-5": [(f"top_eigenpairs (block Lanczos), tol {TOL:g}", top5)],
            "density": [(f"curvature_spectrum, block SLQ {starts} x {steps}", density)]}


def reference_top5(model, loader):
    """Top-5 at tolerance 1e-6 (block Lanczos, untimed): what the rows' deviations refer to."""
    op = ilc.CurvatureOperator(model, nn.CrossEntropyLoss(), loader, kind="hessian",
                               mode="reverse-over-reverse", chunk=1)
    eig = ill.top_eigenpairs(op, 5, tol=REFERENCE_TOL, max_calls=300, seed=7)
    return eig.values.tolist(), eig.converged


# ---------------------------------------------------------------- one model

def describe(task, result, reference):
    if task == "trace":
        value, error = result
        return f"{value:.5g}" + ("" if error is None else f" +- {error:.2g}")
    if task == "top-5":
        deviation = max(abs(a - b) / abs(b) for a, b in zip(result, reference))
        return f"{fmt_values(result)} (max rel. dev. {deviation:.1e})"
    trace, top = result
    return f"trace {trace:.5g}, top node {top:.5g}"


def run_model(name, model, loader, settings, report):
    settings = dict(settings, P=sum(p.numel() for p in model.parameters() if p.requires_grad))
    # built only when asked for: a peer that is not installed is then no obstacle
    tools = [("PyHessian 0.1", lambda: pyhessian_tool(model, loader, settings)),
             ("curvlinops 3.0.1", lambda: curvlinops_tool(model, loader, settings)),
             ("infolens (auto: fastest mode on the first batch)", lambda: infolens_tool(model, loader, settings)),
             ("infolens (rev-over-rev, chunk 1)",
              lambda: infolens_tool(model, loader, settings, mode="reverse-over-reverse", chunk=1))]
    tools = [(tool, build()) for tool, build in tools if tool.split()[0] in settings["tools"]]
    reference, converged = reference_top5(model, loader)
    print(f"\n{name}: P = {settings['P']}, N = {loader.n_samples}, {len(loader)} batches; reference top-5 "
          f"{fmt_values(reference)} (tol {REFERENCE_TOL:g}, converged {converged})", flush=True)
    for task in settings["tasks"]:
        runs = [(tool, method, fn) for tool, methods in tools for method, fn in methods[task]]
        best = {}
        for r in range(settings["rounds"]):
            # every other round in reverse order: a machine whose speed drifts during the run
            # (a shared host's neighbours) favours no tool
            for tool, method, fn in (runs if r % 2 == 0 else runs[::-1]):
                passes, seconds, result = measure(loader, fn)
                if (tool, method) not in best or seconds < best[tool, method][1]:
                    best[tool, method] = (passes, seconds, result)
        base = None
        for tool, method, _ in runs:
            passes, seconds, result = best[tool, method]
            if base is None:
                base = (passes, seconds)
            report.add(task=task, tool=tool, method=method, passes=f"{passes:g}", seconds=f"{seconds:.2f}",
                       **{"PyHessian / this, passes": f"{base[0] / passes:.1f}",
                          "PyHessian / this, time": f"{base[1] / seconds:.2f}",
                          "result": describe(task, result, reference)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N / 4, 12 probes, 4 starts x 16 steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads for every tool (default: all cores; 1 is steadier on a shared machine)")
    parser.add_argument("--tasks", default="trace,top-5,density", help="which of trace, top-5, density")
    parser.add_argument("--tools", default="PyHessian,curvlinops,infolens", help="which tools")
    parser.add_argument("--models", default="MLP,CNN", help="which of MLP, CNN")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every tool's task this many times, alternating the order; best time kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = 4 if args.quick else 1
    settings = ({"probes": 12, "starts": 4, "steps": 16} if args.quick
                else {"probes": 48, "starts": 8, "steps": 64})
    cases = [("MLP 784-128-64-10 tanh, MNIST-sized", mlp, (784,), 2048 // scale, 256),
             ("CNN 2 conv + linear, 3x32x32 CIFAR-like", cnn, (3, 32, 32), 1024 // scale, 128)]
    start = time.perf_counter()
    print(machine())
    print(f"torch threads: {torch.get_num_threads()}")
    print("load average at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    reports = []
    settings.update(tasks=args.tasks.split(","), tools=args.tools.split(","), rounds=args.rounds)
    for seed, (name, build, shape, n, batch) in enumerate(cases):
        if name.split()[0] not in args.models.split(","):
            continue
        # each model's data from its own seed: the same whichever models a run includes
        x, y = synthetic(shape, n, torch.Generator().manual_seed(seed))
        torch.manual_seed(0)
        model = trained(build(), x, y, epochs=1 if args.quick else 5, seed=0)
        report = Report()
        run_model(name, model, CountingLoader(x, y, batch), settings, report)
        reports.append((name, report))
    for name, report in reports:
        print(f"\n### {name}")
        report.finish()
    print("\nload average at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(f"total {time.perf_counter() - start:.0f} s")
    print("issue target: density with at least 5x fewer passes and 3x less time than PyHessian's method")


if __name__ == "__main__":
    main()

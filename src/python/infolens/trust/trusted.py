"""``ci=``, ``n_permutations=``, ``ladder=`` and ``compress=`` for every estimator, written once.

Each public estimator is wrapped by ``trusted(Design(...))``: the design names the arguments whose
rows are samples (subsampled together; two samples of a divergence each on their own), the
rearrangement its permutation test uses, and the arguments that ``compress=`` may compress.
Without these keywords the wrapper calls the estimator and nothing else happens.

With them, in this order: the variables are compressed (the map fitted once on all samples); the
estimate is computed on all samples; the ladder estimates on disjoint blocks at N/2, N/4, ...
(``infolens.trust.ladder``); the permutation test estimates on rearranged samples
(``infolens.trust.permutation``). Subsample estimates use the full estimate's settings: a kernel
bandwidth picked by a rule on all N samples is pinned, because a rule would pick another
bandwidth at another size and so estimate another quantity.

The permutation statistic is the estimate on a fixed random subsample of ``permutation_size``
rows (default: all rows up to 5,000, else N / 20 and at least 5,000; for kernel estimators,
whose exact path costs O(N^3), 1,000 in place of 5,000). A permutation test is exact
with any statistic; a smaller one costs proportionally less and has less power (it detects
dependence down to about the statistic's spread at that size), which keeps 200 permutations near
10 full estimates at any N. ``permutation_size=N`` tests at full power.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from dataclasses import dataclass
from typing import Callable

import torch

from .._arrays import as_samples
from ..linalg._checks import positive_int
from ..result import Estimate
from . import ladder as ladders
from . import permutation
from .compress import compress as compress_arrays
from .compress import parse as parse_compression
from .samples import as_rows, blocks, labels_of, n_rows, order, take

DEFAULT_LEVELS = 4
MIN_LEVELS = 2
PERMUTATION_SHARE = 20


@dataclass(frozen=True)
class Design:
    """How an estimator's arguments are sampled, tested and compressed."""

    groups: tuple[tuple[str, ...], ...]   # arguments whose rows are samples, one tuple per independent sample
    null: tuple | None = None            # the permutation scheme (infolens.trust.permutation), or None
    compress: tuple[str, ...] = ()       # arguments compress= applies to, each on its own
    pooled: bool = False                 # compress the groups with one map (two samples of a divergence)
    hypothesis: str = ""                 # the null hypothesis the permutation test rejects, in words
    # For a "shuffle" null: args -> (perm -> statistics), the estimator's own fast path that
    # prepares what a permutation leaves unchanged (each variable's index) once for all of them.
    shared_null: Callable | None = None
    # Permutation statistics use all rows up to this many (else N / 20, at least this many);
    # kernel estimators cost O(N^3) exactly and take a smaller floor.
    permutation_floor: int = 5000


TRUST_DOC = """
    Trust (``infolens.trust``): ``ci=0.95`` adds a confidence interval from subsamples without
    replacement (and the ladder behind it); ``ladder=L`` estimates at N / 2, ..., N / 2^L on
    disjoint blocks, extrapolates to infinite N and sets ``settled`` (default L = 4 with ``ci``);
    ``n_permutations=B`` adds a permutation p-value{test}; ``permutation_size`` sets the subsample
    the permutation statistic uses; ``compress=`` compresses the variables first (an int: PCA
    dimensions; a float in (0, 1): PCA variance share; ("random", r): random projection).
"""


def _check(ci, n_permutations, ladder, permutation_size, design: Design, fn_name: str):
    if ci is not None:
        if isinstance(ci, bool) or not isinstance(ci, numbers.Real) or not 0 < ci < 1:
            raise ValueError(f"ci must be a confidence level in (0, 1), such as 0.95, got {ci!r}")
        ci = float(ci)
    if n_permutations is not None:
        n_permutations = positive_int(n_permutations, "n_permutations")
        if design.null is None:
            raise ValueError(f"n_permutations: {fn_name} estimates one distribution; there is no "
                             "independence to test (use it on mutual information or a divergence)")
    if ladder is not None:
        ladder = positive_int(ladder, "ladder")
    if permutation_size is not None:
        permutation_size = positive_int(permutation_size, "permutation_size")
    return ci, n_permutations, ladder, permutation_size


def _min_block(args: dict) -> int:
    k = args.get("k")
    return max(16, 4 * (int(k) + 1)) if isinstance(k, numbers.Integral) else 16


def _levels(requested, sizes: list[int], args: dict) -> int:
    """How many halvings the ladder takes: as asked, or the default shortened to what N allows."""
    smallest = min(sizes)
    floor = _min_block(args)
    levels = requested or DEFAULT_LEVELS
    while smallest >> levels < floor and levels > (requested or MIN_LEVELS):
        levels -= 1
    if smallest >> levels < floor:
        raise ValueError(f"ladder: {levels} halvings of {smallest} samples leave blocks of {smallest >> levels}, "
                         f"fewer than the {floor} this estimate needs; use fewer levels (ladder=) or more samples")
    return levels


class _Run:
    """One trusted call: the estimator, its bound arguments, and the rows they share."""

    def __init__(self, fn, design: Design, args: dict):
        self.fn = fn
        self.design = design
        self.args = args
        self.square = args.get("kernel") == "precomputed"
        seed = args.get("seed", 0)
        self.seed = int(seed) if isinstance(seed, numbers.Integral) else 0

    def generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 7919 + salt)

    def sizes(self) -> list[int]:
        return [n_rows(self.args[group[0]]) for group in self.design.groups]

    def labels(self, group) -> torch.Tensor | None:
        return labels_of([self.args[name] for name in group])

    def subset(self, args: dict, rows: list[torch.Tensor]) -> dict:
        out = dict(args)
        for group, r in zip(self.design.groups, rows):
            for name in group:
                out[name] = take(args[name], r, self.square)
        return out

    def values(self, args: dict, context: str) -> list[float]:
        try:
            result = self.fn(**args)
        except ValueError as exc:
            raise ValueError(f"{context}: {exc}") from exc
        return [float(r) for r in (result if isinstance(result, list) else [result])]


def _pin_bandwidth(run: _Run, first: Estimate) -> dict:
    """The arguments for subsample estimates, with a rule's bandwidth replaced by its value on all N.

    Silverman's rule also standardises every feature; the full data's standardisation is applied
    here, so that the fixed bandwidth means the same kernel on every subsample.
    """
    args, sigma = run.args, first.details.get("sigma")
    if not isinstance(args.get("sigma"), str) or sigma is None:
        return args
    values = sigma if isinstance(sigma, list) else [sigma]
    if not all(isinstance(s, numbers.Real) for s in values):
        return args
    args = dict(args, sigma=sigma)
    if run.args["sigma"] == "silverman":
        from ..kernel.kernels import standardised  # the estimator layer's own definition
        for name in run.design.compress:
            value = args[name]
            args[name] = [standardised(as_samples(v, name)) for v in value] if isinstance(value, list) \
                else standardised(as_samples(value, name))
    return args


def _compress(run: _Run, spec) -> dict:
    c = parse_compression(spec, run.seed)
    if run.square:
        raise ValueError("compress: a precomputed kernel matrix has no features to compress")
    design, records = run.design, {}
    names = [n for group in design.groups for n in group if n in design.compress]
    if design.pooled:
        arrays, record = compress_arrays([run.args[n] for n in names], "+".join(names), c)
        run.args.update(zip(names, arrays))
        if record:
            records["+".join(names)] = record
        return records
    for salt, name in enumerate(names):
        value = run.args[name]
        parts = [(f"{name}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(name, value)]
        out = []
        for j, (label, v) in enumerate(parts):
            (v,), record = compress_arrays([v], label, c, salt=100 * salt + j)
            out.append(v)
            if record:
                records[label] = record
        run.args[name] = out if isinstance(value, list) else out[0]
    return records


def _ladder(run: _Run, args: dict, levels: int) -> list[tuple[float, list[list[float]]]]:
    """Per level: (mean block size of the first group, [block estimates per block])."""
    out = []
    for level in range(1, levels + 1):
        parts = 1 << level
        gen = run.generator(level)
        per_group = [blocks(n, parts, run.labels(group), gen) for n, group in zip(run.sizes(), run.design.groups)]
        estimates = [run.values(run.subset(args, [g[b] for g in per_group]),
                                f"ladder level {level} (blocks of about {run.sizes()[0] // parts} samples)")
                     for b in range(parts)]
        out.append((run.sizes()[0] / parts, estimates))
    return out


def _permutation_test(run: _Run, args: dict, full: list[float], n_permutations: int, size):
    sizes = run.sizes()
    n = sizes[0]
    if size is None:
        floor = run.design.permutation_floor
        size = n if n <= floor else max(floor, n // PERMUTATION_SHARE)
    size = min(size, n)
    if size < n:
        gen = run.generator(1000)
        rows = [order(m, run.labels(group), gen)[: max(1, round(m * size / n))]
                for m, group in zip(sizes, run.design.groups)]
        args = run.subset(args, rows)
        observed = run.values(args, f"permutation statistic on {size} samples")
    else:
        observed = full
    gen, cache = run.generator(2000), {}
    design = run.design
    if design.shared_null is not None and design.null[0] == "shuffle":
        # The same permutations, in the same order, as the generic path below draws.
        statistic = design.shared_null(args)
        rows = n_rows(args[design.null[1]])
        null = [statistic(torch.randperm(rows, generator=gen)) for _ in range(n_permutations)]
    else:
        null = [run.values(permutation.rearrange(design.null, args, gen, cache), "permuted samples")
                for _ in range(n_permutations)]
    return permutation.p_values(observed, null), null, size


def trusted(design: Design):
    """Give an estimator the trust keywords (see the module docstring)."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def call(*args, ci=None, n_permutations=None, ladder=None, permutation_size=None, compress=None, **kwargs):
            ci, n_permutations, ladder, permutation_size = _check(ci, n_permutations, ladder, permutation_size,
                                                                  design, fn.__name__)
            if ci is None and n_permutations is None and ladder is None and compress is None:
                return fn(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            run = _Run(fn, design, dict(bound.arguments))
            for group in design.groups:
                for name in group:
                    run.args[name] = as_rows(run.args[name])
            records = _compress(run, compress) if compress is not None else None
            first = fn(**run.args)
            results = first if isinstance(first, list) else [first]
            full = [float(r) for r in results]
            fields = [dict(compression=records) for _ in results]
            sub_args = _pin_bandwidth(run, results[0])
            if ci is not None or ladder is not None:
                levels = _levels(ladder, run.sizes(), run.args)
                steps = _ladder(run, sub_args, levels)
                for o, r in enumerate(results):
                    lad = ladders.build(full[o], run.sizes()[0], [(size, [v[o] for v in vals]) for size, vals in steps])
                    fields[o].update(ladder=lad, settled=lad.settled, stderr=lad.stderr,
                                     details=dict(r.details, pointwise_stderr=r.stderr))
                    if ci is not None:
                        fields[o].update(interval=ladders.interval(full[o], lad, ci), confidence=ci)
            if n_permutations is not None:
                p, null, size = _permutation_test(run, sub_args, full, n_permutations, permutation_size)
                for o, r in enumerate(results):
                    details = dict(fields[o].get("details", r.details), permutation_size=size,
                                   null_hypothesis=design.hypothesis, null_statistics=[row[o] for row in null])
                    fields[o].update(p_value=p[o], n_permutations=n_permutations, details=details)
            out = [r.replace(**f) for r, f in zip(results, fields)]
            return out if isinstance(first, list) else out[0]

        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
                 for name in ("ci", "n_permutations", "ladder", "permutation_size", "compress")]
        call.__signature__ = signature.replace(parameters=list(signature.parameters.values()) + extra)
        call.design = design
        test = f" (null hypothesis: {design.hypothesis})" if design.hypothesis else ""
        call.__doc__ = (fn.__doc__ or "") + TRUST_DOC.format(test=test)
        return call

    return wrap

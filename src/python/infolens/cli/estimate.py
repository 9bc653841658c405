"""``infolens estimate ESTIMATOR X [Y] [Z] [options]``: one estimate from array files, as JSON.

Inputs are files read by ``infolens.files.load_array`` (.npy, .npz, .pt/.pth, .safetensors,
.csv/.tsv), with ``path:key`` selecting an array of an archive or columns of a CSV. The data is
passed to the estimator as stored: integer arrays stay integers, so an integer label file as Y of
``mi`` is read as class labels (Ross's estimator), as it would be from Python.

Decisions:
* An option the chosen estimator does not take (``--metric`` for ``vendi``, ``--q`` for ``mi``)
  is an error, not silently ignored; options map one to one onto the estimator's keywords.
* The output is one JSON object (``allow_nan=False``; infinities and NaN are the strings "inf",
  "-inf" and "nan"), on stdout or in ``--output``. Keys that were not asked for (interval,
  p_value, ladder, ...) are left out.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import numbers
import sys

from . import UsageError

# name -> (function name in infolens, input names)
ESTIMATORS = {
    "entropy": ("entropy", ("X",)),
    "renyi": ("renyi_entropy", ("X",)),
    "mi": ("mutual_info", ("X", "Y")),
    "cmi": ("conditional_mutual_info", ("X", "Y", "Z")),
    "kl": ("kl_divergence", ("P", "Q")),
    "matrix-entropy": ("matrix_entropy", ("X",)),
    "matrix-mi": ("matrix_mutual_info", ("X", "Y")),
    "vendi": ("vendi_score", ("X",)),
    "dse": ("diffusion_spectral_entropy", ("X",)),
    "rank-me": ("rank_me", ("Z",)),
}

# command-line option (argparse dest) -> estimator keyword; applies where the estimator has it
OPTIONS = {"k": "k", "method": "method", "metric": "metric", "alpha": "alpha", "q": "q", "base": "base",
           "backend": "backend", "kernel": "kernel", "sigma": "sigma", "t": "t", "seed": "seed"}
# estimator keywords with no default: the option must be given
REQUIRED = {"renyi": ("q",)}

USAGE = "infolens estimate ESTIMATOR X [Y] [Z] [options]"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "estimate", usage=USAGE, help="estimate entropy, mutual information, ... from array files",
        description="Estimate one information-theoretic quantity from array files and print it as JSON. "
                    "Inputs: .npy, .npz, .pt/.pth, .safetensors, .csv/.tsv; FILE:KEY selects an array of "
                    "an archive (or columns of a CSV, by name or 0-based index, comma-separated).",
        epilog="inputs per estimator: entropy, renyi, matrix-entropy, vendi, dse, rank-me: X; "
               "mi, matrix-mi: X Y; cmi: X Y Z (I(X;Y|Z)); kl: P Q (D(P||Q)).")
    p.add_argument("estimator", choices=list(ESTIMATORS), metavar="ESTIMATOR",
                   help="one of: " + ", ".join(ESTIMATORS))
    p.add_argument("inputs", nargs="+", metavar="FILE", help="input files X [Y] [Z] (FILE or FILE:KEY)")
    g = p.add_argument_group("estimator options (each applies where the estimator takes it)")
    g.add_argument("-k", "--k", type=int, dest="k", help="neighbours (kNN estimators)")
    g.add_argument("--method", help="estimator variant (mi: auto, ksg1, ksg2, ross, mixed; kernel: auto, exact, ...)")
    g.add_argument("--metric", help="kNN metric: max, euclidean, manhattan or p >= 1")
    g.add_argument("--alpha", type=float, help="order of matrix-entropy / matrix-mi")
    g.add_argument("--q", type=float, help="order of renyi (required) and vendi")
    g.add_argument("--base", help="logarithm base: 2 for bits, 10, e (default: nats)")
    g.add_argument("--backend", choices=("auto", "native", "reference"), help="engine (default auto)")
    g.add_argument("--kernel", help="kernel of matrix-entropy / matrix-mi / vendi (gaussian, cosine, ...)")
    g.add_argument("--sigma", help="kernel bandwidth: a number or a rule (silverman, median)")
    g.add_argument("--t", type=int, help="diffusion time of dse")
    g.add_argument("--seed", type=int, help="random seed (jitter, probes, subsamples, permutations)")
    t = p.add_argument_group("trust (infolens.trust)")
    t.add_argument("--ci", type=float, metavar="LEVEL", help="confidence interval at LEVEL, e.g. 0.95")
    t.add_argument("--permutations", type=int, metavar="B", help="permutation test with B permutations")
    t.add_argument("--ladder", type=int, metavar="L", help="subsample ladder with L halvings")
    t.add_argument("--compress", metavar="SPEC",
                   help="int: PCA dims; float in (0,1): PCA variance share; random:R: random projection")
    p.add_argument("-o", "--output", metavar="FILE", help="write the JSON here (default: stdout)")
    p.set_defaults(run=run)
    return p


def _number_or_text(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _base(text: str):
    if text.strip().lower() == "e":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--base must be a number (2 for bits) or 'e', got {text!r}") from None


def parse_compress(text: str):
    """``--compress``: "8" -> 8 (PCA dims), "0.9" -> 0.9 (variance share), "random:8", "pca:0.9"."""
    spec = text.strip()
    method = None
    if ":" in spec:
        method, spec = (s.strip() for s in spec.split(":", 1))
        method = method.lower()
        if method not in ("pca", "random"):
            raise UsageError(f"--compress: method must be pca or random, got {method!r}")
    try:
        value = int(spec)
    except ValueError:
        try:
            value = float(spec)
        except ValueError:
            raise UsageError(f"--compress must be dims (8), a variance share (0.9) or random:R, got {text!r}") from None
    return value if method is None else (method, value)


def _keywords(args, name: str, fn) -> dict:
    params = inspect.signature(fn).parameters
    kwargs = {}
    for dest, keyword in OPTIONS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if keyword not in params:
            takes = [f"--{d}" for d, kw in OPTIONS.items() if kw in params]
            what = f"it takes {', '.join(takes)}" if takes else "it takes none of the estimator options"
            raise UsageError(f"--{dest} does not apply to {name} ({what})")
        if dest in ("metric", "sigma"):
            value = _number_or_text(value)
        elif dest == "base":
            value = _base(value)
        kwargs[keyword] = value
    for keyword in REQUIRED.get(name, ()):
        if keyword not in kwargs:
            raise UsageError(f"{name} needs --{keyword}")
    if args.ci is not None:
        kwargs["ci"] = args.ci
    if args.permutations is not None:
        kwargs["n_permutations"] = args.permutations
    if args.ladder is not None:
        kwargs["ladder"] = args.ladder
    if args.compress is not None:
        kwargs["compress"] = parse_compress(args.compress)
    return kwargs


def _clean(obj):
    """JSON-safe: non-finite floats as strings, numpy/torch scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        v = float(obj)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if hasattr(obj, "item"):
        return _clean(obj.item())
    return str(obj)


def result_json(name: str, function: str, est, inputs: list[dict]) -> dict:
    out = {"estimator": name, "function": function, "value": float(est), "units": est.units,
           "stderr": est.stderr, "n": est.n, "k": est.k, "method": est.method, "backend": est.backend,
           "tie_fraction": est.tie_fraction}
    if est.interval is not None:
        out["interval"] = list(est.interval)
        out["confidence"] = est.confidence
    if est.p_value is not None:
        out["p_value"] = est.p_value
        out["n_permutations"] = est.n_permutations
        for extra in ("null_hypothesis", "permutation_size"):
            if extra in est.details:
                out[extra] = est.details[extra]
    if est.settled is not None:
        out["settled"] = bool(est.settled)
    if est.ladder is not None:
        lad = est.ladder
        out["ladder"] = {"sizes": list(lad.sizes), "means": list(lad.means), "extrapolated": lad.extrapolated,
                         "drift": lad.drift, "drift_stderr": lad.drift_stderr}
    if est.compression:
        out["compression"] = {var: str(record) for var, record in est.compression.items()}
    out["inputs"] = inputs
    return _clean(out)


def run(args) -> int:
    import infolens
    from ..files import load_array, parse_spec

    name = args.estimator
    function, names = ESTIMATORS[name]
    if len(args.inputs) != len(names):
        plural = "input" if len(names) == 1 else "inputs"
        raise UsageError(f"{name} takes {len(names)} {plural} ({' '.join(names)}), got {len(args.inputs)}")
    fn = getattr(infolens, function)
    kwargs = _keywords(args, name, fn)
    arrays, inputs = [], []
    for label, text in zip(names, args.inputs):
        path, key = parse_spec(text)
        arrays.append(load_array(path, key))
        inputs.append({"name": label, "path": path, "key": key, "shape": list(arrays[-1].shape),
                       "dtype": str(arrays[-1].dtype)})
    est = fn(*arrays, **kwargs)
    text = json.dumps(result_json(name, function, est, inputs), indent=2, allow_nan=False) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0

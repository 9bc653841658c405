"""The information plane of a network over training: I(X;T) and I(T;Y) per layer, per checkpoint.

``InfoPlaneTracker`` attaches forward hooks to the named layers (default: every nn.Linear and
nn.Conv output), and each ``record(epoch)`` runs the model once over a fixed set of inputs, in
eval mode and without gradients, and estimates per layer:

* ``"fixed"``: plug-in MI of 30 equal-width bins (Shwartz-Ziv & Tishby 2017);
* ``"adaptive"``: plug-in MI of 30 equal-count bins (Chelombiev, Houghton & O'Donnell 2019);
* ``"knn"``: KSG-1 for I(X;T) and Ross for I(T;Y), X and T first compressed by PCA to at most
  ``knn_dims`` dimensions (kNN estimators lose accuracy fast with dimension);
* ``"renyi"``: matrix-based Renyi (von Neumann) MI, Gaussian kernels, Y one-hot;

and, when asked, the kernel entropies of each layer (``"DSE"``, ``"von Neumann"``) and the
curvature of the loss at the current weights (``"top eigenvalue"``, ``"trace"``, ``"effective
dimension"`` from one stochastic Lanczos run over the GGN or Hessian; layer ``"model"``).

Memory stays bounded: the inputs are subsampled once (``max_samples``, seeded) and only the
chosen layers' outputs for those inputs are held, one checkpoint at a time. With a
``directory``, each checkpoint is appended to ``metrics.jsonl`` as it is computed
(``infolens.infoplane.store``); ``resume=True`` reloads it, and ``record`` returns an epoch
already on disk without computing it again, so a restarted training loop resumes where it stopped.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import curvature as curvature_family
from ..kernel import diffusion_spectral_entropy, matrix_entropy, matrix_mutual_info
from ..knn import mutual_info
from ..layers._select import select_layers
from ..layers.capture import model_device, outputs_of
from ..linalg._checks import positive_int
from .binning import binned_information
from .store import MetricStore

ESTIMATORS = ("fixed", "adaptive", "knn", "renyi")
CURVATURE_KINDS = ("ggn", "hessian", "fisher")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(t.shape[0], -1).to(torch.float64)


def _check_estimators(estimators) -> tuple[str, ...]:
    estimators = (estimators,) if isinstance(estimators, str) else tuple(estimators)
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad or not estimators:
        raise ValueError(f"estimators must be a non-empty list drawn from {ESTIMATORS}, got {estimators!r}")
    return estimators


class InfoPlaneTracker:
    """Per-layer information-plane coordinates of ``model`` on fixed ``inputs`` with ``labels``.

    ``layers``: names or modules (default every Linear/Conv). ``estimators``: from ``ESTIMATORS``.
    ``bins``: for the binning estimators; ``value_range``: fixed binning's range (default each
    layer's own min..max), one (low, high) for all layers or a dict of them by layer name
    ((-1, 1) for tanh layers, as Shwartz-Ziv & Tishby bin them). ``kernel_samples``: the
    matrix-based estimates ("renyi", ``kernel``) use the first this many of the (already
    randomly subsampled) inputs, since their exact path costs O(N^3). ``kernel``: also
    DSE and von Neumann entropy per layer. ``curvature``: None, or a dict with ``loss`` (e.g.
    nn.CrossEntropyLoss()) and ``data`` ((x, y) or a DataLoader), optional ``kind`` ("ggn"),
    ``probes`` (4), ``steps`` (16), ``z`` (1e-3, the effective dimension's scale).
    ``directory``/``resume``: where checkpoints are appended (see the module docstring).
    """

    def __init__(self, model: nn.Module, inputs, labels, *, layers=None, estimators=("fixed",), bins: int = 30,
                 value_range=None, k: int = 3, knn_dims: int = 10, kernel: bool = False, curvature=None,
                 max_samples: int = 2000, kernel_samples: int = 1000, batch_size: int = 1024, directory=None, resume: bool = False,
                 seed: int = 0):
        self.model = model
        self.layers = select_layers(model, layers)
        self.estimators = _check_estimators(estimators)
        x = torch.as_tensor(inputs)
        y = torch.as_tensor(labels)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"labels must be 1-D with one label per input ({x.shape[0]}), got shape {tuple(y.shape)}")
        if positive_int(max_samples, "max_samples") < 2:
            raise ValueError(f"max_samples must be at least 2, got {max_samples!r}")
        if x.shape[0] > max_samples:
            keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_samples]
            x, y = x[keep.to(x.device)], y[keep.to(y.device)]
        self.inputs, self.labels = x, y.cpu()
        self.bins, self.value_range, self.k, self.knn_dims = bins, value_range, k, knn_dims
        self.kernel = bool(kernel)
        if positive_int(kernel_samples, "kernel_samples") < 2:
            raise ValueError(f"kernel_samples must be at least 2, got {kernel_samples!r}")
        self.kernel_samples = int(kernel_samples)
        self.curvature = self._check_curvature(curvature)
        self.batch_size = batch_size
        self.seed = seed
        self.store = MetricStore(directory, resume)

    @staticmethod
    def _check_curvature(spec):
        if spec is None:
            return None
        if not isinstance(spec, dict) or "loss" not in spec or "data" not in spec:
            raise ValueError("curvature must be None or a dict with 'loss' and 'data' (and optionally "
                             "'kind', 'probes', 'steps', 'z')")
        spec = dict(dict(kind="ggn", probes=4, steps=16, z=1e-3, batch_size=None), **spec)
        if spec["kind"] not in CURVATURE_KINDS:
            raise ValueError(f"curvature kind must be one of {CURVATURE_KINDS}, got {spec['kind']!r}")
        return spec

    # ---- activations ------------------------------------------------------------------------

    def activations(self) -> dict[str, torch.Tensor]:
        """name -> [N, features] outputs of each layer on the tracker's inputs (eval mode, no grad)."""
        parts: dict[str, list] = {name: [] for name in self.layers}
        device = model_device(self.model)
        with outputs_of(self.model, self.layers, "inputs") as forward:
            for start in range(0, self.inputs.shape[0], self.batch_size):
                batch = self.inputs[start : start + self.batch_size]
                for name, out in forward(batch if device is None else batch.to(device)).items():
                    parts[name].append(out)
        return {name: _flat(torch.cat(p)) for name, p in parts.items()}

    # ---- estimates --------------------------------------------------------------------------

    def _plane(self, name: str, t: torch.Tensor, estimator: str, x: torch.Tensor) -> list[dict]:
        y = self.labels.to(t.device)
        if estimator in ("fixed", "adaptive"):
            ixt, ity = binned_information(t, y, method=estimator, bins=self.bins,
                                          value_range=self._range(name) if estimator == "fixed" else None)
        elif estimator == "knn":
            ixt = mutual_info(x, t, k=self.k, method="ksg1", compress=self.knn_dims, seed=self.seed)
            ity = mutual_info(t, y, k=self.k, method="ross", compress=self.knn_dims, seed=self.seed)
        else:  # renyi
            m = self.kernel_samples
            onehot = torch.nn.functional.one_hot(y[:m].long() - int(y.min())).to(torch.float64)
            ixt = matrix_mutual_info(x[:m], t[:m], seed=self.seed)
            ity = matrix_mutual_info(t[:m], onehot, seed=self.seed)
        return [dict(layer=name, metric=f"I(X;T) {estimator}", value=float(ixt), stderr=_stderr(ixt)),
                dict(layer=name, metric=f"I(T;Y) {estimator}", value=float(ity), stderr=_stderr(ity))]

    def _range(self, name: str):
        return self.value_range.get(name) if isinstance(self.value_range, dict) else self.value_range

    def _kernel(self, name: str, t: torch.Tensor) -> list[dict]:
        t = t[: self.kernel_samples]
        dse = diffusion_spectral_entropy(t, seed=self.seed)
        vn = matrix_entropy(t, seed=self.seed)
        return [dict(layer=name, metric="DSE", value=float(dse), stderr=_stderr(dse)),
                dict(layer=name, metric="von Neumann", value=float(vn), stderr=_stderr(vn))]

    def _curvature(self) -> list[dict]:
        c = self.curvature
        op = curvature_family.CurvatureOperator(self.model, c["loss"], c["data"], kind=c["kind"],
                                                batch_size=c["batch_size"])
        spec = curvature_family.curvature_spectrum(op, probes=c["probes"], steps=c["steps"], seed=self.seed)
        q = spec.quadrature
        top = float(q.nodes[q.weights > 0].max()) if q.nodes.numel() else float(q.top.max())
        trace, trace_se = spec.trace()
        dim, dim_se = spec.effective_dimension(c["z"])
        return [dict(layer="model", metric="top eigenvalue", value=top, stderr=None),
                dict(layer="model", metric="trace", value=trace, stderr=trace_se),
                dict(layer="model", metric="effective dimension", value=dim, stderr=dim_se)]

    def record(self, epoch: int, step: int | None = None, *, estimators=None, kernel=None, curvature=None,
               metrics: dict | None = None) -> dict:
        """Estimate and append one checkpoint; returns it (``{"epoch", "step", "rows"}``).

        ``estimators``/``kernel``/``curvature`` override the tracker's settings for this call
        (``curvature=False`` skips it); ``metrics`` adds the caller's own numbers (loss, accuracy)
        as rows of layer "model". An epoch already recorded (a resumed run) is returned as stored.
        """
        if epoch in self.store.epochs():
            return self.store.checkpoints[self.store.epochs().index(epoch)]
        estimators = self.estimators if estimators is None else _check_estimators(estimators)
        acts = self.activations()
        x = _flat(self.inputs).to(next(iter(acts.values())).device)  # estimates run where the model does
        rows = []
        for name, t in acts.items():
            for estimator in estimators:
                rows += self._plane(name, t, estimator, x)
            if self.kernel if kernel is None else kernel:
                rows += self._kernel(name, t)
        if self.curvature is not None and curvature is not False:
            rows += self._curvature()
        for key, value in (metrics or {}).items():
            rows.append(dict(layer="model", metric=str(key), value=float(value), stderr=None))
        return self.store.append(epoch, step, rows)

    __call__ = record


def _stderr(estimate):
    se = getattr(estimate, "stderr", math.nan)
    return None if se is None or not math.isfinite(se) else float(se)

"""``infolens demo``: train small MLPs on scikit-learn's digits and report what they learned.

Two networks, 64-16-12-8-6-10 with tanh and with ReLU, are trained with Adam on 1,347 of the
1,797 8x8 digit images that ship with scikit-learn (nothing is downloaded), and tracked: the
information plane of each hidden layer and the logits (fixed and adaptive binning every epoch;
KSG/Ross and matrix-based Renyi at checkpoints), the layers' kernel entropies (DSE, von Neumann)
and the curvature of the loss (GGN: top eigenvalue, trace, effective dimension) at checkpoints,
the spectral density and complexity curve of the final model. The output folder gets the run
state (``runs/``) and the report (``report/``: figures, metrics.csv, metrics.json, index.html).

``--resume`` continues an interrupted run from its last finished epoch: the metrics on disk are
kept, the model, optimiser and data order are restored from the epoch's saved state, and the
finished report is the same, file for file, as an uninterrupted run's.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
WIDTHS = (64, 16, 12, 8, 6, 10)  # narrowing, as Shwartz-Ziv & Tishby's 12-10-7-5-4-3-2: binning saturates on wide layers


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="train small MLPs on digits and write an information-plane report",
                              description=__doc__)
    p.add_argument("--output", default="infolens-demo", help="output folder (default ./infolens-demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 60; 4 with --quick)")
    p.add_argument("--quick", action="store_true", help="a reduced run: fewer epochs, samples and checkpoints")
    p.add_argument("--resume", action="store_true", help="continue the run in --output where it stopped")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run)


def load_digits(seed: int):
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1], a seeded 75/25 split."""
    from . import UsageError
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise UsageError("the demo trains on scikit-learn's bundled digits: pip install 'infolens[demo]'") from None
    data = sklearn_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    train, test = order[:1347], order[1347:]
    return x[train], y[train], x[test], y[test]


def mlp(activation: str, seed: int) -> nn.Sequential:
    """Hidden activations named h1..h4 (the tracked layers, as the figures label them), then logits."""
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:]), start=1):
        if i < len(WIDTHS) - 1:
            layers += [(f"linear{i}", nn.Linear(a, b)), (f"h{i}", ACTIVATIONS[activation]())]
        else:
            layers.append(("logits", nn.Linear(a, b)))
    return nn.Sequential(OrderedDict(layers))


def checkpoints(epochs: int, quick: bool) -> set[int]:
    """Epochs with the costly estimates: roughly log-spaced, always the first and the last."""
    if quick:
        return {0, epochs}
    return {0, epochs} | {e for e in (3, 10, 20, 50, 100, 200) if e < epochs}


class Progress:
    """One line on stderr, redrawn: a bar, the step, and the elapsed time."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self.start = total, 0, enabled, time.monotonic()

    def advance(self, what: str, steps: int = 1):
        self.done += steps
        if self.enabled:
            filled = int(30 * self.done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {what:<34}"
                             f"{time.monotonic() - self.start:6.0f} s")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def train_and_track(name: str, folder: Path, data, epochs: int, quick: bool, resume: bool, seed: int, progress):
    """Train one network, tracking it into ``folder``; returns (model, its tracker's store)."""
    from ..infoplane.tracker import InfoPlaneTracker
    x_train, y_train, x_test, y_test = data
    model = mlp(name, seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    order_gen = torch.Generator().manual_seed(seed + 1)
    loss_fn = nn.CrossEntropyLoss()
    hidden = [n for n, m in model.named_modules() if isinstance(m, tuple(ACTIVATIONS.values()))]
    fixed_range = {layer: (-1.0, 1.0) for layer in hidden} if name == "tanh" else None  # tanh's own range
    n_eval = 500 if quick else 1347
    tracker = InfoPlaneTracker(model, x_train, y_train, layers=hidden + ["logits"], estimators=("fixed", "adaptive"),
                               value_range=fixed_range, max_samples=n_eval, kernel_samples=min(n_eval, 600),
                               directory=folder, resume=resume,
                               curvature=dict(loss=loss_fn, data=(x_train[:n_eval], y_train[:n_eval]), kind="ggn",
                                              probes=4, steps=8 if quick else 16),
                               seed=seed)
    state_path = folder / "state.pt"
    start = 0
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        order_gen.set_state(state["order"])
        start = state["epoch"] + 1
        progress.advance(f"{name}: resumed after epoch {state['epoch']}", start)
    heavy = checkpoints(epochs, quick)
    for epoch in range(start, epochs + 1):
        if epoch > 0:
            model.train()
            for rows in torch.randperm(x_train.shape[0], generator=order_gen).split(64):
                optimiser.zero_grad()
                loss_fn(model(x_train[rows]), y_train[rows]).backward()
                optimiser.step()
        model.eval()
        with torch.no_grad():
            train_loss = float(loss_fn(model(x_train), y_train))
        extra = epoch in heavy
        tracker.record(epoch, estimators=("fixed", "adaptive", "knn", "renyi") if extra else None, kernel=extra,
                       curvature=extra, metrics={"train loss": train_loss,
                                                 "train accuracy": _accuracy(model, x_train, y_train),
                                                 "test accuracy": _accuracy(model, x_test, y_test)})
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "order": order_gen.get_state(), "epoch": epoch}, tmp)
        tmp.replace(state_path)  # atomic: a crash leaves the previous epoch's state whole
        progress.advance(f"{name}: epoch {epoch}/{epochs}")
    return model, tracker


def run(args) -> int:
    from . import UsageError
    from ..curvature import CurvatureOperator, curvature_spectrum
    from ..infoplane.report import write_report
    epochs = args.epochs if args.epochs is not None else (4 if args.quick else 60)
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    out = Path(args.output)
    runs_dir = out / "runs"
    if runs_dir.exists() and not args.resume:
        raise UsageError(f"{out} already holds a run; use --resume to continue it or choose another --output")
    data = load_digits(args.seed)
    progress = Progress(2 * (epochs + 1) + 1, not args.no_progress)
    stores, spectra = {}, {}
    for name in ACTIVATIONS:
        model, tracker = train_and_track(name, runs_dir / name, data, epochs, args.quick, args.resume, args.seed,
                                         progress)
        stores[name] = tracker.store
        n = 500 if args.quick else 1347
        op = CurvatureOperator(model, nn.CrossEntropyLoss(), (data[0][:n], data[1][:n]), kind="ggn")
        spectra[name] = curvature_spectrum(op, probes=4, steps=16 if args.quick else 32, seed=args.seed)
    notes = (f"Two 64-16-12-8-6-10 MLPs (tanh, ReLU) trained with Adam for {epochs} epochs on scikit-learn's digits "
             "(1,347 training images); layers are the hidden activations and the logits. I(X;T) and I(T;Y) in "
             "nats; binning estimators every epoch, kNN and matrix-based Renyi, kernel entropies and curvature "
             "(GGN) at checkpoints.")
    page = write_report(out / "report", stores, spectra, title="infolens demo: MLPs on digits", notes=notes)
    progress.advance("report written")
    progress.close()
    final = {name: store.checkpoints[-1] for name, store in stores.items()}
    for name, checkpoint in final.items():
        acc = next(r["value"] for r in checkpoint["rows"] if r["metric"] == "test accuracy")
        print(f"{name}: test accuracy {acc:.3f} after {epochs} epochs")
    print(f"report: {page}")
    return 0

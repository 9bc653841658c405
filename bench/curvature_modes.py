"""The ways infolens computes a Hessian product, side by side, on models of several shapes.

    python bench/curvature_modes.py --threads 1      # about 8 minutes on 2 CPU cores

For each model, one 8-column Hessian product over its data (4 batches), in every mode that
applies: the layer-by-layer sweeps (``mode="sequential"``; for the models that are not an
``nn.Sequential`` over the graph torch.fx traces) against autograd's forward-over-reverse and
reverse-over-reverse (all columns at once, and one at a time, which is what ``mode="auto"``
also tries). Each product is timed after one untimed call (the sweeps' kept forward pass is
then in use, as in every pass of an SLQ or Lanczos run after the first), best of two. The last
columns: the sweeps' speed-up over autograd's fastest way, and their largest difference from
the column-by-column autograd product, relative to its largest entry.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import infolens.curvature as ilc
from _harness import Report, machine, timed


class Block(nn.Module):
    """A ResNet basic block (He et al. 2016), with a projection where the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.short(x))


class ResNet8(nn.Module):
    """CIFAR ResNet with one block per stage (PyHessian's examples use this family)."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        self.stages = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(64, 10)

    def forward(self, x):
        out = self.stages(F.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


class Bag(nn.Module):
    """A text classifier: a bag of word embeddings, averaged over the tokens, through an MLP."""

    def __init__(self):
        super().__init__()
        self.embed, self.fc, self.head = nn.Embedding(5000, 64), nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, tokens):
        return self.head(F.gelu(self.fc(self.embed(tokens).mean(1))))


def cases():
    # (name, builder, one sample's shape, samples; a shape of ("tokens", L) means L word indices)
    return [
        ("MLP 784-128-64-10 tanh", lambda: nn.Sequential(
            nn.Linear(784, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10)), (784,), 1024),
        ("MLP 256-512-512-10, LayerNorm + GELU", lambda: nn.Sequential(
            nn.Linear(256, 512), nn.LayerNorm(512), nn.GELU(), nn.Linear(512, 512), nn.LayerNorm(512), nn.GELU(),
            nn.Linear(512, 10)), (256,), 1024),
        ("CNN 2 conv + BatchNorm + linear", lambda: nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(512, 10)), (3, 32, 32), 512),
        ("ResNet-8 (traced by torch.fx)", ResNet8, (3, 32, 32), 256),
        ("MobileNet-style CNN: depthwise + pointwise convolutions", lambda: nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 1),
            nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32),
            nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)), (3, 32, 32), 256),
        ("GroupNorm CNN with upsampling (a small decoder)", lambda: nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.GroupNorm(8, 32), nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(32, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(64, 10)), (3, 32, 32), 256),
        ("bag of embeddings, 5000 words x 64, 32 tokens (traced)", Bag, ("tokens", 32), 1024),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"torch threads: {torch.get_num_threads()}")
    report = Report()
    for name, build, shape, n in cases():
        torch.manual_seed(0)
        model = build()
        x = torch.randint(0, 5000, (n, shape[1])) if shape[0] == "tokens" else torch.randn(n, *shape)
        y = torch.randint(0, 10, (n,))
        model.train()  # BatchNorm's running statistics from the data, then eval mode throughout
        with torch.no_grad():
            model(x)
        model.eval()
        loader = [(x[i:i + n // 4], y[i:i + n // 4]) for i in range(0, n, n // 4)]
        v = torch.randn(sum(p.numel() for p in model.parameters()), 8, dtype=torch.float64)
        seconds, products = {}, {}
        for mode, chunk in (("sequential", None), ("forward-over-reverse", None), ("reverse-over-reverse", None),
                            ("reverse-over-reverse", 1)):
            op = ilc.CurvatureOperator(model, nn.CrossEntropyLoss(), loader, kind="hessian", mode=mode, chunk=chunk)
            label = mode if chunk is None else f"{mode}, one column at a time"
            try:
                op(v)
            except RuntimeError as exc:  # an op without a forward-mode derivative or a batching rule
                print(f"{name}, {mode}: {str(exc).splitlines()[0][:100]}")
                seconds[label] = None
                continue
            seconds[label], products[label] = timed(lambda: op(v), repeat=2)
        autograd = min(s for label, s in seconds.items() if label != "sequential" and s is not None)
        truth = products["reverse-over-reverse, one column at a time"]
        gap = float((products["sequential"] - truth).abs().max() / truth.abs().max())
        report.add(model=name, **{label: "fails" if s is None else f"{s:.3f}" for label, s in seconds.items()},
                   **{"sweeps' speed-up": f"{autograd / seconds['sequential']:.2f}x", "difference": f"{gap:.1e}"})
    report.finish()


if __name__ == "__main__":
    main()

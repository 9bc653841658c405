"""Metrics on disk, appended as they are computed, so that a crash loses nothing and a run resumes.

``metrics.jsonl`` holds one line per checkpoint: ``{"epoch": e, "step": s, "rows": [...]}``, each
row ``{"layer", "metric", "value", "stderr"}``. A checkpoint is one ``write`` of one line, flushed
and synced before the call returns; a crash can at worst leave a last line without its newline,
which loading drops (and cuts from the file), so every line read back is a whole checkpoint.
The report (``infolens.infoplane.report``) writes ``metrics.csv`` and ``metrics.json`` from the
lines, in checkpoint order, with no timestamps: the same run gives the same files, interrupted and
resumed or not.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

FIELDS = ("epoch", "step", "layer", "metric", "value", "stderr")


def _number(v):
    """JSON has no inf or nan: they are written as strings."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else str(v)


def _float(v):
    return None if v is None else float(v)


class MetricStore:
    """Checkpoints of metrics, in memory and (with a directory) in ``metrics.jsonl``."""

    def __init__(self, directory=None, resume: bool = False):
        self.checkpoints: list[dict] = []
        self.path = None
        if directory is None:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "metrics.jsonl"
        if self.path.exists():
            if not resume:
                raise ValueError(f"directory {str(directory)!r} already holds metrics.jsonl; pass resume=True "
                                 "to continue that run, or choose another directory")
            self._load()

    def _load(self):
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1  # a last line without its newline was cut short by a crash
        for line in data[:good].decode().splitlines():
            self.checkpoints.append(json.loads(line))
        if good < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def epochs(self) -> list[int]:
        return [c["epoch"] for c in self.checkpoints]

    def append(self, epoch: int, step, rows: list[dict]) -> dict:
        checkpoint = {"epoch": int(epoch), "step": None if step is None else int(step),
                      "rows": [dict(layer=r["layer"], metric=r["metric"], value=_number(r["value"]),
                                    stderr=_number(r.get("stderr"))) for r in rows]}
        if self.path is not None:
            line = json.dumps(checkpoint, allow_nan=False) + "\n"
            with open(self.path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        self.checkpoints.append(checkpoint)
        return checkpoint

    def rows(self) -> list[dict]:
        """Every row, flat: epoch, step, layer, metric, value (float), stderr (float or None)."""
        return [dict(epoch=c["epoch"], step=c["step"], layer=r["layer"], metric=r["metric"],
                     value=_float(r["value"]), stderr=_float(r["stderr"]))
                for c in self.checkpoints for r in c["rows"]]

    def series(self, metric: str, layer: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of one metric of one layer, in checkpoint order."""
        pairs = [(r["epoch"], r["value"]) for r in self.rows() if r["metric"] == metric and r["layer"] == layer]
        return [e for e, _ in pairs], [v for _, v in pairs]

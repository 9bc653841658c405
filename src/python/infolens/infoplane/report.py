"""A report folder people want to look at: figures, the metrics as CSV and JSON, one HTML page.

``write_report(directory, runs, spectra)``: ``runs`` maps a run's name (say "tanh") to its
``MetricStore``; ``spectra`` maps the same names to a ``CurvatureSpectrum`` of the final model
(or is empty). It writes, per run, the information plane of each estimator recorded, the curves
over epochs and the spectral density and complexity curve; then ``metrics.csv`` (one row per
run, epoch, layer and metric), ``metrics.json`` and ``index.html``, which embeds every figure as
a data URI, so the page is one self-contained file. Nothing in the files depends on the clock.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from pathlib import Path

from ..curvature.plots import plot_complexity, plot_density
from .plots import plot_curves, plot_plane
from .store import FIELDS

PLANES = ("fixed", "adaptive", "knn", "renyi")


def _figure(draw, path: Path) -> bytes:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    # no timestamp or software tag in the file: the same run gives the same bytes
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    data = buf.getvalue()
    path.write_bytes(data)
    return data


def _metrics(directory: Path, runs: dict) -> None:
    with open(directory / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("run",) + FIELDS)
        writer.writeheader()
        for name, store in runs.items():
            for row in store.rows():
                writer.writerow({"run": name, **{k: "" if row[k] is None else row[k] for k in FIELDS}})
    with open(directory / "metrics.json", "w") as f:
        json.dump({name: store.checkpoints for name, store in runs.items()}, f, indent=1, allow_nan=False)
        f.write("\n")


def _curves(store) -> list[str]:
    """Every metric that is not an information-plane coordinate, in the order first recorded:
    kernel entropies, curvature summaries and whatever the caller logged (loss, accuracy)."""
    seen = []
    for row in store.rows():
        if not row["metric"].startswith(("I(X;T) ", "I(T;Y) ")) and row["metric"] not in seen:
            seen.append(row["metric"])
    return seen


def _has(store, metric: str) -> bool:
    return any(r["metric"] == metric for r in store.rows())


def write_report(directory, runs: dict, spectra: dict | None = None, title: str = "infolens report",
                 notes: str = "") -> Path:
    """Write the report folder; returns the path of ``index.html``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spectra = spectra or {}
    sections = []
    for name, store in runs.items():
        figures = []
        for estimator in PLANES:
            if _has(store, f"I(X;T) {estimator}"):
                figures.append((f"{name}_plane_{estimator}.png", f"{name}: information plane ({estimator})",
                                lambda ax, e=estimator, s=store, n=name: plot_plane(s, e, ax, title=f"{n}: information plane ({e})")))
        for metric in _curves(store):
            figures.append((f"{name}_{re.sub(r'[^A-Za-z0-9.-]+', '_', metric)}.png", f"{name}: {metric}",
                            lambda ax, m=metric, s=store: plot_curves(s, m, ax)))
        for estimator in PLANES:
            if _has(store, f"I(T;Y) {estimator}"):
                figures.append((f"{name}_ITY_{estimator}.png", f"{name}: I(T;Y) over epochs ({estimator})",
                                lambda ax, e=estimator, s=store: plot_curves(s, f"I(T;Y) {e}", ax)))
        if name in spectra:
            figures.append((f"{name}_spectral_density.png", f"{name}: curvature spectral density (final)",
                            lambda ax, sp=spectra[name]: plot_density(sp, ax)))
            figures.append((f"{name}_complexity.png", f"{name}: complexity curve (final)",
                            lambda ax, sp=spectra[name]: plot_complexity(sp, ax=ax)))
        blocks = []
        for filename, caption, draw in figures:
            data = _figure(draw, directory / filename)
            uri = "data:image/png;base64," + base64.b64encode(data).decode()
            blocks.append(f'<figure><img src="{uri}" alt="{html.escape(caption)}"><figcaption>'
                          f"{html.escape(caption)}</figcaption></figure>")
        sections.append(f"<section><h2>{html.escape(name)}</h2>\n<div class=grid>" + "\n".join(blocks)
                        + "</div>\n" + _final_table(store) + "</section>")
    _metrics(directory, runs)
    page = directory / "index.html"
    page.write_text(_PAGE.format(title=html.escape(title), notes=notes, sections="\n".join(sections)))
    return page


def _final_table(store) -> str:
    if not store.checkpoints:
        return ""
    last = store.checkpoints[-1]
    rows = "".join(f"<tr><td>{html.escape(r['layer'])}</td><td>{html.escape(r['metric'])}</td>"
                   f"<td>{_fmt(r['value'])}</td><td>{_fmt(r['stderr'])}</td></tr>" for r in last["rows"])
    return (f"<details><summary>metrics at epoch {last['epoch']}</summary><table><tr><th>layer</th>"
            f"<th>metric</th><th>value</th><th>stderr</th></tr>{rows}</table></details>")


def _fmt(v) -> str:
    if v is None:
        return ""
    return html.escape(v) if isinstance(v, str) else f"{v:.4g}"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 1em; }}
figure {{ margin: 0; }} img {{ width: 100%; height: auto; }} figcaption {{ font-size: 0.9em; color: #555; }}
table {{ border-collapse: collapse; font-size: 0.85em; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
</style></head>
<body><h1>{title}</h1>
<p>{notes}</p>
{sections}
<p>Metrics: <a href="metrics.csv">metrics.csv</a>, <a href="metrics.json">metrics.json</a>.</p>
</body></html>
"""

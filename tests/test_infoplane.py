"""The information-plane tracker, its store on disk, the report, and the demo end to end."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import infolens as il
from infolens.cli import main
from infolens.infoplane import InfoPlaneTracker, MetricStore, write_report


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), nn.Tanh(), nn.Linear(3, 2))
    x = torch.randn(300, 4)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return model, x, y


def _train_one_epoch(model, x, y, gen):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for rows in torch.randperm(x.shape[0], generator=gen).split(50):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
        opt.step()


def test_tracker_records_each_layer_and_epoch_as_asked():
    model, x, y = _tiny()
    tracker = InfoPlaneTracker(model, x, y, layers=["1", "3"], estimators=("fixed", "adaptive", "knn", "renyi"),
                               kernel=True, curvature=dict(loss=nn.CrossEntropyLoss(), data=(x, y), steps=6))
    model.train()
    gen = torch.Generator().manual_seed(0)
    for epoch in range(3):
        if epoch:
            _train_one_epoch(model, x, y, gen)
        tracker.record(epoch, metrics={"loss": 1.0 / (epoch + 1)}, curvature=epoch == 2)
    assert model.training  # the tracker restores the mode it found
    assert not any(m._forward_hooks for m in model.modules())
    rows = tracker.store.rows()
    assert {r["epoch"] for r in rows} == {0, 1, 2}
    assert {r["layer"] for r in rows} == {"1", "3", "model"}
    per_layer = {r["metric"] for r in rows if r["layer"] == "1"}
    assert per_layer == {f"I({a}) {e}" for a in ("X;T", "T;Y") for e in ("fixed", "adaptive", "knn", "renyi")} \
        | {"DSE", "von Neumann"}
    assert {r["metric"] for r in rows if r["layer"] == "model" and r["epoch"] == 2} == \
        {"loss", "top eigenvalue", "trace", "effective dimension"}
    assert all(math.isfinite(r["value"]) for r in rows)
    # I(T;Y) of a binary label is at most log 2; binned I(X;T) at most log N
    for r in rows:
        if r["metric"].startswith("I(T;Y) fixed"):
            assert -1e-12 <= r["value"] <= math.log(2) + 1e-12
        if r["metric"].startswith("I(X;T) fixed"):
            assert 0 <= r["value"] <= math.log(300) + 1e-12
    # the binned values are what binned_information gives on the layer's output
    acts = tracker.activations()
    ixt, ity = il.infoplane.binned_information(acts["3"], y, method="fixed")
    _, last = tracker.store.series("I(X;T) fixed", "3")
    assert last[-1] == pytest.approx(float(ixt), abs=1e-12)
    # a trace from SLQ is a positive number for a GGN; the top eigenvalue at most the trace
    top = tracker.store.series("top eigenvalue", "model")[1][0]
    trace = tracker.store.series("trace", "model")[1][0]
    assert 0 < top <= trace * (1 + 1e-6)


def _run(directory, epochs, crash_after=None, resume=False):
    """Train and track `epochs` epochs; optionally 'crash' (stop) after an epoch, or resume."""
    model, x, y = _tiny()
    gen = torch.Generator().manual_seed(1)
    state = Path(directory) / "state.pt"
    start = 0
    tracker = InfoPlaneTracker(model, x, y, estimators=("fixed", "knn"), directory=directory, resume=resume)
    if resume and state.exists():
        saved = torch.load(state, weights_only=False)
        model.load_state_dict(saved["model"])
        gen.set_state(saved["gen"])
        start = saved["epoch"] + 1
    for epoch in range(start, epochs):
        if epoch:
            _train_one_epoch(model, x, y, gen)
        tracker.record(epoch)
        torch.save({"model": model.state_dict(), "gen": gen.get_state(), "epoch": epoch}, state)
        if epoch == crash_after:
            return


def test_resume_after_a_crash_gives_the_same_files(tmp_path):
    _run(tmp_path / "whole", 4)
    _run(tmp_path / "broken", 4, crash_after=1)
    # the crash also cut the last line short: it must be dropped, not read
    path = tmp_path / "broken" / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"epoch": 2, "step": null, "rows": [{"layer"')
    _run(tmp_path / "broken", 4, resume=True)
    assert (tmp_path / "broken" / "metrics.jsonl").read_bytes() == (tmp_path / "whole" / "metrics.jsonl").read_bytes()
    stores = {name: MetricStore(tmp_path / name, resume=True) for name in ("whole", "broken")}
    for name, store in stores.items():
        write_report(tmp_path / f"report_{name}", {"run": store})
    for f in ("metrics.csv", "metrics.json", "index.html"):
        assert (tmp_path / "report_whole" / f).read_bytes() == (tmp_path / "report_broken" / f).read_bytes()


def test_store_refuses_to_overwrite_and_keeps_inf(tmp_path):
    store = MetricStore(tmp_path)
    store.append(0, None, [dict(layer="a", metric="m", value=math.inf, stderr=None)])
    with pytest.raises(ValueError, match="resume=True"):
        MetricStore(tmp_path)
    again = MetricStore(tmp_path, resume=True)
    assert again.rows()[0]["value"] == math.inf


def test_tracker_bad_inputs():
    model, x, y = _tiny()
    with pytest.raises(ValueError, match="estimators"):
        InfoPlaneTracker(model, x, y, estimators=("bins",))
    with pytest.raises(ValueError, match="labels"):
        InfoPlaneTracker(model, x, y[:10])
    with pytest.raises(ValueError, match="layers"):
        InfoPlaneTracker(model, x, y, layers=["nope"])
    with pytest.raises(ValueError, match="curvature"):
        InfoPlaneTracker(model, x, y, curvature={"loss": nn.MSELoss()})
    with pytest.raises(ValueError, match="max_samples"):
        InfoPlaneTracker(model, x, y, max_samples=1)


def test_tracker_subsamples_to_bound_memory():
    model, x, y = _tiny()
    tracker = InfoPlaneTracker(model, x, y, max_samples=100)
    acts = tracker.activations()
    assert all(a.shape[0] == 100 for a in acts.values())


# ---- the demo and its report ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--quick", "--epochs", "2", "--output", str(out), "--no-progress"]) == 0
    return out


def test_demo_writes_the_report(demo_dir):
    report = demo_dir / "report"
    for f in ("index.html", "metrics.csv", "metrics.json", "tanh_plane_fixed.png", "relu_plane_knn.png",
              "tanh_spectral_density.png", "relu_complexity.png"):
        assert (report / f).stat().st_size > 0, f
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics) == {"tanh", "relu"}
    assert [c["epoch"] for c in metrics["tanh"]] == [0, 1, 2]
    html = (report / "index.html").read_text()
    assert html.count("data:image/png;base64,") >= 20
    assert "<script" not in html  # self-contained and static


def test_demo_resume_continues_and_matches(demo_dir, tmp_path, monkeypatch):
    """Interrupted in the second network's training, then resumed: the same report files."""
    from infolens.cli import demo

    advance = demo.Progress.advance

    def crash(self, what, steps=1):
        advance(self, what, steps)
        if what == "relu: epoch 1/2":
            raise KeyboardInterrupt

    out = tmp_path / "out"
    args = ["demo", "--quick", "--epochs", "2", "--output", str(out), "--no-progress"]
    monkeypatch.setattr(demo.Progress, "advance", crash)
    assert main(args) == 130
    monkeypatch.setattr(demo.Progress, "advance", advance)
    assert not (out / "report").exists()
    assert main(args) == 2  # the folder holds a run: resume it or choose another
    assert main(args + ["--resume"]) == 0
    for f in ("metrics.csv", "metrics.json", "index.html", "tanh_plane_fixed.png"):
        assert (out / "report" / f).read_bytes() == (demo_dir / "report" / f).read_bytes(), f


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium (CI installs Debian's)")
def test_report_renders_its_figures_in_a_browser(demo_dir, tmp_path):
    shot = tmp_path / "page.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1300,2400"]
    page = (demo_dir / "report" / "index.html").resolve().as_uri()
    subprocess.run([_chromium(), *flags, f"--screenshot={shot}", page], check=True, timeout=120,
                   capture_output=True)
    from matplotlib.image import imread
    pixels = imread(shot)[..., :3]
    # viridis markers and coloured lines exist only inside the figures: the page shows them
    saturation = pixels.max(-1) - pixels.min(-1)
    assert (saturation > 0.3).mean() > 0.002
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page], check=True, timeout=120,
                         capture_output=True, text=True).stdout
    assert dom.count("<img") >= 20 and "information plane" in dom


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tracker_on_a_cuda_model_gives_the_cpu_values():
    model, x, y = _tiny()
    cpu = InfoPlaneTracker(model, x, y, estimators=("fixed", "adaptive", "knn")).record(0)
    gpu = InfoPlaneTracker(model.cuda(), x, y, estimators=("fixed", "adaptive", "knn")).record(0)
    for a, b in zip(cpu["rows"], gpu["rows"]):
        assert (a["layer"], a["metric"]) == (b["layer"], b["metric"])
        assert b["value"] == pytest.approx(a["value"], abs=1e-6)

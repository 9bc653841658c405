"""``infolens estimate``: every input format, every estimator, the trust options, and bad inputs.

The command is run in-process (``infolens.cli.main``) and once through ``python -m infolens.cli``;
each value is compared with the estimator called directly on the same array.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import infolens
from infolens import files
from infolens.cli import COMMANDS, main
from infolens.cli.estimate import _clean, parse_compress

N = 300


@pytest.fixture(autouse=True)
def _sibling_commands(monkeypatch):
    """Subcommand modules other sessions have not written yet get an empty stand-in (in-process only)."""
    for name in COMMANDS:
        full = f"infolens.cli.{name}"
        if full not in sys.modules and importlib.util.find_spec(full) is None:
            monkeypatch.setitem(sys.modules, full, types.SimpleNamespace(add_parser=lambda sub: None))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 2))
    y = x[:, :1] + 0.5 * rng.standard_normal((N, 1))
    z = rng.standard_normal((N, 1))
    labels = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)
    return dict(x=x, y=y, z=z, labels=labels, wide=rng.standard_normal((N, 6)))


def estimate(capsys, *argv):
    rc = main(["estimate", *map(str, argv)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""
    return json.loads(out)


def fails(capsys, *argv) -> str:
    rc = main(["estimate", *map(str, argv)])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- a safetensors writer of our own (the format: u64 LE header length, JSON header, raw LE bytes) ---

def write_safetensors(path, tensors: dict, metadata=None):
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + b"".join(chunks))


def st_entry(arr: np.ndarray, dtype: str):
    np_dtype = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                "I8": "i1", "U8": "u1", "BOOL": "?"}
    if dtype == "BF16":
        raw = torch.from_numpy(np.ascontiguousarray(arr, np.float32)).to(torch.bfloat16).view(torch.int16).numpy()
        return dtype, arr.shape, raw.astype("<i2").tobytes()
    return dtype, arr.shape, np.ascontiguousarray(arr, np_dtype[dtype]).tobytes()


# -- every format round-trips ----------------------------------------------------------------------

def write_format(tmp_path, fmt, x):
    if fmt == "npy":
        np.save(tmp_path / "x.npy", x)
        return str(tmp_path / "x.npy")
    if fmt == "npz":
        np.savez(tmp_path / "acts.npz", layer1=x, layer2=x[:, :1] * 3)
        return str(tmp_path / "acts.npz") + ":layer1"
    if fmt == "npz-single":
        np.savez_compressed(tmp_path / "one.npz", x)
        return str(tmp_path / "one.npz")
    if fmt == "pt":
        torch.save(torch.from_numpy(x), tmp_path / "x.pt")
        return str(tmp_path / "x.pt")
    if fmt == "pth-dict":
        torch.save({"encoder": {"h": torch.from_numpy(x)}, "head": torch.zeros(3), "epoch": 4}, tmp_path / "m.pth")
        return str(tmp_path / "m.pth") + ":encoder/h"
    if fmt == "safetensors":
        write_safetensors(tmp_path / "x.safetensors", {"a": st_entry(x, "F64"), "b": st_entry(x[:5], "F32")},
                          metadata={"format": "pt"})
        return str(tmp_path / "x.safetensors") + ":a"
    if fmt == "csv":
        with open(tmp_path / "x.csv", "w") as f:
            f.write("first,label,second\n")
            for row in x:
                f.write(f"{float(row[0])!r},7,{float(row[1])!r}\n")
        return str(tmp_path / "x.csv") + ":first,2"
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["npy", "npz", "npz-single", "pt", "pth-dict", "safetensors", "csv"])
def test_formats_give_the_direct_value(capsys, tmp_path, data, fmt):
    spec = write_format(tmp_path, fmt, data["x"])
    out = estimate(capsys, "entropy", spec, "-k", 4)
    direct = infolens.entropy(data["x"], k=4)
    assert out["value"] == pytest.approx(float(direct), rel=1e-12, abs=1e-12)
    assert out["estimator"] == "entropy" and out["n"] == N and out["k"] == 4 and out["units"] == "nats"
    for field in ("stderr", "method", "backend", "tie_fraction"):
        assert field in out
    assert "interval" not in out and "p_value" not in out and "ladder" not in out
    path, key = files.parse_spec(spec)
    assert out["inputs"] == [{"name": "X", "path": path, "key": key, "shape": [N, 2],
                              "dtype": str(files.load_array(path, key).dtype)}]


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"])
def test_safetensors_dtypes(tmp_path, dtype):
    rng = np.random.default_rng(1)
    src = rng.standard_normal((4, 3)) * 50
    if dtype in ("I64", "I32", "I16", "I8"):
        src = np.round(src).clip(-100, 100)
    elif dtype == "U8":
        src = np.abs(np.round(src)).clip(0, 200)
    elif dtype == "BOOL":
        src = src > 0
    write_safetensors(tmp_path / "t.safetensors", {"t": st_entry(src, dtype)})
    got = files.load_array(tmp_path / "t.safetensors")
    if dtype == "BF16":
        want = torch.from_numpy(src.astype(np.float32)).to(torch.bfloat16).float().numpy()
        assert got.dtype == np.float32
    else:
        want = src.astype({"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": bool}[dtype])
        assert got.dtype == want.dtype
    assert got.shape == (4, 3)
    np.testing.assert_array_equal(got, want)


def test_torch_bfloat16_and_csv_details(tmp_path):
    t = torch.randn(10, 2).to(torch.bfloat16)
    torch.save(t, tmp_path / "b.pt")
    np.testing.assert_array_equal(files.load_array(tmp_path / "b.pt"), t.float().numpy())
    (tmp_path / "plain.csv").write_text("# comment\n1;2\n3;4\n\n5;6\n")
    got = files.load_array(tmp_path / "plain.csv")
    assert got.dtype == np.int64 and got.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert files.load_array(tmp_path / "plain.csv", "1").tolist() == [2, 4, 6]
    (tmp_path / "f.tsv").write_text("a\tb\n1.5\t2\n-3\t1e3\n")
    assert files.load_array(tmp_path / "f.tsv", "b").tolist() == [2.0, 1000.0]


def test_parse_spec(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    odd = tmp_path / "b:c.npy"
    np.save(odd, np.zeros(3))
    np.savez(tmp_path / "z.npz", w=np.zeros(3))
    assert files.parse_spec(str(tmp_path / "a.npy")) == (str(tmp_path / "a.npy"), None)
    assert files.parse_spec(str(odd)) == (str(odd), None)                       # a colon in the name
    assert files.parse_spec(str(tmp_path / "z.npz") + ":w") == (str(tmp_path / "z.npz"), "w")
    assert files.parse_spec(str(tmp_path / "z.npz") + ":a:b") == (str(tmp_path / "z.npz") + ":a:b", None)
    assert files.parse_spec("nowhere.npz:k") == ("nowhere.npz:k", None)


# -- every estimator --------------------------------------------------------------------------------

CASES = [
    ("renyi", ["x"], ["--q", "2"], lambda d: infolens.renyi_entropy(d["x"], 2.0)),
    ("mi", ["x", "y"], ["--metric", "euclidean"], lambda d: infolens.mutual_info(d["x"], d["y"], metric="euclidean")),
    ("cmi", ["x", "y", "z"], ["-k", "5"], lambda d: infolens.conditional_mutual_info(d["x"], d["y"], d["z"], k=5)),
    ("kl", ["x", "wide2"], [], lambda d: infolens.kl_divergence(d["x"], d["wide"][:, :2])),
    ("matrix-entropy", ["x"], ["--alpha", "2", "--base", "2"], lambda d: infolens.matrix_entropy(d["x"], 2.0, base=2)),
    ("matrix-mi", ["x", "y"], ["--sigma", "1.5"], lambda d: infolens.matrix_mutual_info(d["x"], d["y"], sigma=1.5)),
    ("vendi", ["x"], ["--q", "1"], lambda d: infolens.vendi_score(d["x"], 1.0)),
    ("dse", ["x"], ["--t", "2"], lambda d: infolens.diffusion_spectral_entropy(d["x"], 2)),
    ("rank-me", ["wide"], [], lambda d: infolens.rank_me(d["wide"])),
]


@pytest.mark.parametrize("name,inputs,options,direct", CASES, ids=[c[0] for c in CASES])
def test_estimators_match_direct_calls(capsys, tmp_path, data, name, inputs, options, direct):
    arrays = dict(data, wide2=data["wide"][:, :2])
    paths = []
    for var in inputs:
        np.save(tmp_path / f"{var}.npy", arrays[var])
        paths.append(tmp_path / f"{var}.npy")
    out = estimate(capsys, name, *paths, *options)
    assert out["value"] == pytest.approx(float(direct(data)), rel=1e-10, abs=1e-12)
    assert [i["name"] for i in out["inputs"]] == list(infolens.cli.estimate.ESTIMATORS[name][1])
    if "--base" in options:
        assert out["units"] == "bits"


def test_integer_labels_are_labels(capsys, tmp_path, data):
    np.save(tmp_path / "x.npy", data["x"])
    with open(tmp_path / "labels.csv", "w") as f:
        f.write("label\n" + "\n".join(str(v) for v in data["labels"]) + "\n")
    out = estimate(capsys, "mi", tmp_path / "x.npy", tmp_path / "labels.csv")
    direct = infolens.mutual_info(data["x"], data["labels"])
    assert out["method"] == direct.method == "ross"
    assert out["inputs"][1]["dtype"] == "int64"
    assert out["value"] == pytest.approx(float(direct), rel=1e-12)


def test_mi_with_interval_and_permutation_test(capsys, tmp_path, data):
    np.savez(tmp_path / "xy.npz", x=data["x"], y=data["y"])
    out = estimate(capsys, "mi", f"{tmp_path}/xy.npz:x", f"{tmp_path}/xy.npz:y", "--ci", "0.9",
                   "--permutations", "19", "--seed", "3")
    direct = infolens.mutual_info(data["x"], data["y"], ci=0.9, n_permutations=19, seed=3)
    assert out["value"] == pytest.approx(float(direct), rel=1e-12)
    lo, hi = out["interval"]
    assert lo < out["value"] < hi and out["confidence"] == 0.9
    assert out["interval"] == pytest.approx(list(direct.interval))
    assert out["p_value"] == pytest.approx(direct.p_value) and out["p_value"] <= 0.1
    assert out["n_permutations"] == 19
    assert isinstance(out["settled"], bool)
    assert set(out["ladder"]) == {"sizes", "means", "extrapolated", "drift", "drift_stderr"}
    assert out["ladder"]["sizes"][0] == N and len(out["ladder"]["sizes"]) == len(out["ladder"]["means"])


def test_compress_and_output_file(capsys, tmp_path, data):
    np.save(tmp_path / "w.npy", data["wide"])
    target = tmp_path / "result.json"
    rc = main(["estimate", "entropy", str(tmp_path / "w.npy"), "--compress", "random:2", "--ladder", "2",
               "--output", str(target)])
    out, err = capsys.readouterr()
    assert rc == 0 and out == "" and err == ""
    result = json.loads(target.read_text())
    direct = infolens.entropy(data["wide"], compress=("random", 2), ladder=2)
    assert result["value"] == pytest.approx(float(direct), rel=1e-12)
    assert result["compression"] == {name: str(c) for name, c in direct.compression.items()}
    assert "ladder" in result and "interval" not in result
    assert parse_compress("3") == 3 and parse_compress("0.8") == 0.8 and parse_compress("pca:0.5") == ("pca", 0.5)


def test_non_finite_values_become_strings():
    cleaned = _clean({"a": float("inf"), "b": [float("-inf"), float("nan")], "c": np.float32(1.5), "d": np.int64(2)})
    assert cleaned == {"a": "inf", "b": ["-inf", "nan"], "c": 1.5, "d": 2}
    json.dumps(cleaned, allow_nan=False)


# -- bad inputs: exit status 2 and one line naming the problem --------------------------------------

def test_bad_inputs(capsys, tmp_path, data):
    np.save(tmp_path / "x.npy", data["x"])
    np.save(tmp_path / "short.npy", data["y"][:100])
    x = str(tmp_path / "x.npy")

    assert "no such file" in fails(capsys, "entropy", tmp_path / "missing.npy")
    assert "missing.npy" in fails(capsys, "entropy", tmp_path / "missing.npy")

    (tmp_path / "x.xlsx").write_bytes(b"PK")
    line = fails(capsys, "entropy", tmp_path / "x.xlsx")
    assert "unknown file type" in line and ".xlsx" in line

    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "bad.npy").write_bytes(raw[:200])                          # truncated
    line = fails(capsys, "entropy", tmp_path / "bad.npy")
    assert "bad.npy" in line and "corrupt" in line
    (tmp_path / "junk.npy").write_bytes(b"this is not numpy at all")
    assert "not a .npy file" in fails(capsys, "entropy", tmp_path / "junk.npy")

    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert "object array" in fails(capsys, "entropy", tmp_path / "obj.npy")

    np.savez(tmp_path / "many.npz", h1=data["x"], h2=data["y"])
    line = fails(capsys, "entropy", tmp_path / "many.npz")
    assert "2 arrays" in line and "'h1'" in line and "'h2'" in line
    line = fails(capsys, "entropy", f"{tmp_path}/many.npz:h3")
    assert "no array 'h3'" in line and "'h1', 'h2'" in line

    torch.save({"a": torch.zeros(5)}, tmp_path / "d.pt")
    assert "no tensor 'b'" in fails(capsys, "entropy", f"{tmp_path}/d.pt:b")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00\x01garbage")
    assert "corrupt.pt" in fails(capsys, "entropy", tmp_path / "corrupt.pt")

    (tmp_path / "c.safetensors").write_bytes(struct.pack("<Q", 10 ** 6) + b"{}")
    assert "not a .safetensors file" in fails(capsys, "entropy", tmp_path / "c.safetensors")
    write_safetensors(tmp_path / "t.safetensors", {"t": st_entry(data["x"], "F32")})
    whole = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(whole[:-16])
    assert "truncated .safetensors" in fails(capsys, "entropy", tmp_path / "t.safetensors")
    assert "--seed does not apply to rank-me" in fails(capsys, "rank-me", x, "--seed", "1")

    (tmp_path / "text.csv").write_text("a,b\n1,2\n3,oops\n")
    line = fails(capsys, "entropy", tmp_path / "text.csv")
    assert "line 3" in line and "'oops'" in line
    (tmp_path / "c.csv").write_text("a,b\n1,2\n")
    assert "no column 'z'" in fails(capsys, "entropy", f"{tmp_path}/c.csv:z")

    line = fails(capsys, "mi", x, tmp_path / "short.npy")
    assert "same number of samples" in line and "300" in line and "100" in line

    assert "mi takes 2 inputs (X Y), got 1" in fails(capsys, "mi", x)
    assert "entropy takes 1 input (X), got 2" in fails(capsys, "entropy", x, x)
    assert "cmi takes 3 inputs (X Y Z), got 4" in fails(capsys, "cmi", x, x, x, x)
    assert "--metric does not apply to vendi" in fails(capsys, "vendi", x, "--metric", "max")
    assert "renyi needs --q" in fails(capsys, "renyi", x)
    assert "n_permutations" in fails(capsys, "entropy", x, "--permutations", "10")
    assert "--compress" in fails(capsys, "entropy", x, "--compress", "lots")


def test_module_entry_point(tmp_path, data):
    missing = [c for c in COMMANDS if importlib.util.find_spec(f"infolens.cli.{c}") is None]
    if missing:
        pytest.skip(f"subcommand module(s) not written yet: {missing}")
    np.save(tmp_path / "x.npy", data["x"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ok = subprocess.run([sys.executable, "-m", "infolens.cli", "estimate", "entropy", str(tmp_path / "x.npy")],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["value"] == pytest.approx(float(infolens.entropy(data["x"])), rel=1e-12)
    bad = subprocess.run([sys.executable, "-m", "infolens.cli", "estimate", "entropy", str(tmp_path / "nope.npy")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [f"infolens estimate: error: {tmp_path / 'nope.npy'}: no such file"]

"""Reading arrays from files: what the ``infolens`` command takes as input.

``load_array(path, key=None)`` reads one numeric array from

* ``.npy``: the array (pickled object arrays are refused, never unpickled);
* ``.npz``: the array named ``key``; without a key the archive must hold exactly one array;
* ``.pt`` / ``.pth``: ``torch.load(weights_only=True)`` (no arbitrary code runs) of a tensor, or of
  a dict of tensors (``key`` names one; nested dicts and lists as ``outer/inner``, ``layers/0``);
* ``.safetensors``: read here, without the ``safetensors`` package: 8-byte little-endian header
  length, a JSON header of ``{name: {dtype, shape, data_offsets}}``, then the raw little-endian
  bytes. F64, F32, F16, I64, I32, I16, I8, U8 and BOOL keep their type; BF16 becomes float32
  (numpy has no bfloat16; the conversion is exact). Only the asked-for tensor's bytes are read;
* ``.csv`` (comma, or tab / semicolon when the first line has no comma) and ``.tsv``: numbers,
  with a header row when the first row is not all numbers. ``key`` selects columns by name or
  0-based index, comma-separated (``"a,b"``, ``"0,2"``). A file (or selection) of one column is
  1-D; cells that are all integers give an int64 array (read as class labels by estimators that
  take labels), otherwise float64. Empty and non-numeric cells are errors, never dropped.

Decision: the data keeps its dtype (integers stay integers) so the estimators' own rules apply
(integer ``y`` means labels to ``mutual_info``), exactly as if the array were passed in Python.

``parse_spec("acts.npz:layer1")`` splits the ``path:key`` shorthand (POSIX paths): the text is a
path when it names an existing file; otherwise it splits at the last colon when the part before
it names an existing file; otherwise it is a path (and loading it reports it missing).

Every error is a ``FileNotFoundError`` (missing file) or ``ValueError`` with one line that names
the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import warnings
import zipfile

import numpy as np

SUFFIXES = (".npy", ".npz", ".pt", ".pth", ".safetensors", ".csv", ".tsv")

_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100_000_000  # the limit of the safetensors format itself


def parse_spec(text: str) -> tuple[str, str | None]:
    """``"file"`` -> (file, None); ``"file:key"`` -> (file, key) when ``file`` exists (last colon)."""
    text = os.fspath(text)
    if os.path.isfile(text) or ":" not in text:
        return text, None
    head, key = text.rsplit(":", 1)
    if head and os.path.isfile(head):
        return head, (key or None)
    return text, None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def _pick(path: str, names: list, key, what: str) -> str:
    """The key to read from an archive of ``names``: the one given, or the only one there is."""
    if key is None:
        if len(names) != 1:
            raise ValueError(f"{path}: holds {len(names)} {what}s ({_keys_text(names)}); "
                             f"choose one with {path}:KEY")
        return names[0]
    if key not in names:
        raise ValueError(f"{path}: no {what} {key!r}; it holds {_keys_text(names)}")
    return key


def _keys_text(keys) -> str:
    keys = list(keys)
    return ", ".join(repr(k) for k in keys) if keys else "(none)"


def _checked(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype.kind == "O":
        raise ValueError(f"{where} holds an object array (Python objects), not numbers; save a numeric array")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{where} holds non-numeric data (dtype {arr.dtype}); infolens needs real numbers")
    return arr


def load_array(path, key: str | None = None) -> np.ndarray:
    """One numeric array from a .npy, .npz, .pt/.pth, .safetensors or .csv/.tsv file (see the module doc)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a file")
    suffix = os.path.splitext(path)[1].lower()
    readers = {".npy": _load_npy, ".npz": _load_npz, ".pt": _load_torch, ".pth": _load_torch,
               ".safetensors": _load_safetensors, ".csv": _load_csv, ".tsv": _load_csv}
    if suffix not in readers:
        raise ValueError(f"{path}: unknown file type {suffix or '(no extension)'!r}; "
                         f"expected one of {', '.join(SUFFIXES)}")
    key = None if key is None or key == "" else str(key)
    try:
        return readers[suffix](path, key)
    except PermissionError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or _one_line(exc)})") from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot be read ({exc.strerror or _one_line(exc)})") from None


# -- numpy ----------------------------------------------------------------------------------------

def _magic(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _object_error(where: str) -> ValueError:
    return ValueError(f"{where} holds an object array (pickled Python objects), not numbers; "
                      "save a numeric array")


def _load_npy(path: str, key):
    if key is not None:
        raise ValueError(f"{path}: a .npy file holds one array; there is no key {key!r} to select")
    if _magic(path, 6) != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file (it does not start with the NPY magic bytes)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "object arrays" in str(exc).lower():
            raise _object_error(path) from None
        raise ValueError(f"{path}: corrupt .npy file ({_one_line(exc)})") from None
    except (EOFError, TypeError, struct.error, SyntaxError) as exc:
        raise ValueError(f"{path}: corrupt .npy file ({_one_line(exc)})") from None
    return _checked(arr, path)


def _load_npz(path: str, key):
    magic = _magic(path, 6)
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npz archive (the content is a single .npy array; rename it .npy)")
    if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(f"{path}: not a .npz archive (it is not a zip file)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: corrupt .npz archive ({_one_line(exc)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not a .npz archive")
    with archive:
        key = _pick(path, list(archive.files), key, "array")
        where = f"{path}:{key}"
        try:
            arr = archive[key]
        except ValueError as exc:
            if "object arrays" in str(exc).lower():
                raise _object_error(where) from None
            raise ValueError(f"{where}: cannot be read ({_one_line(exc)})") from None
        except (EOFError, zipfile.BadZipFile, struct.error, SyntaxError, OSError) as exc:
            raise ValueError(f"{where}: cannot be read ({_one_line(exc)})") from None
    return _checked(arr, where)


# -- torch ----------------------------------------------------------------------------------------

def _tensor_to_numpy(t, where: str) -> np.ndarray:
    import torch
    t = t.detach()
    if t.is_sparse:
        t = t.to_dense()
    t = t.cpu()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    if t.is_complex():
        raise ValueError(f"{where} holds complex numbers (dtype {t.dtype}); infolens needs real numbers")
    try:
        return _checked(t.numpy(), where)
    except TypeError as exc:
        raise ValueError(f"{where} holds dtype {t.dtype}, which infolens cannot read ({_one_line(exc)})") from None


def _children(value):
    if isinstance(value, dict):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(value)]
    return []


def _tensor_keys(obj, prefix=""):
    import torch
    out = []
    for name, value in _children(obj):
        if isinstance(value, torch.Tensor):
            out.append(prefix + name)
        else:
            out.extend(_tensor_keys(value, prefix + name + "/"))
    return out


def _torch_error(exc: BaseException) -> str:
    """The informative sentence of torch.load's (long, multi-line) error."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker):]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    return first.split(". ", 1)[0].rstrip(".")


def _load_torch(path: str, key):
    import pickle

    import torch
    magic = _magic(path, 4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":
        raise ValueError(f"{path}: not a torch file (neither the zip format of torch.save nor a legacy pickle)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: cannot be loaded safely with torch.load(weights_only=True) "
                         f"({_torch_error(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, zipfile errors, ...
        if isinstance(exc, PermissionError):
            raise
        raise ValueError(f"{path}: corrupt torch file ({_torch_error(exc)})") from None
    if isinstance(obj, torch.Tensor):
        if key is not None:
            raise ValueError(f"{path}: holds a single tensor; there is no key {key!r} to select")
        return _tensor_to_numpy(obj, path)
    if isinstance(obj, (dict, list, tuple)):
        names = _tensor_keys(obj)
        if not names:
            raise ValueError(f"{path}: holds a {type(obj).__name__} without tensors")
        if key is None:
            if len(names) != 1:
                raise ValueError(f"{path}: holds {len(names)} tensors ({_keys_text(names)}); "
                                 f"choose one with {path}:KEY")
            key = names[0]
        value = obj[key] if isinstance(obj, dict) and key in obj else None
        if value is None:
            value = obj
            for part in key.split("/"):
                value = dict(_children(value)).get(part)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: no tensor {key!r}; it holds {_keys_text(names)}")
        return _tensor_to_numpy(value, f"{path}:{key}")
    raise ValueError(f"{path}: holds a {type(obj).__name__}, not a tensor or a dict of tensors")


# -- safetensors ----------------------------------------------------------------------------------

def read_safetensors_header(path: str) -> tuple[dict, int]:
    """(the JSON header, the byte offset where the data starts) of a .safetensors file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a .safetensors file (only {len(head)} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path}: not a .safetensors file (header length {length} does not fit "
                             f"a file of {size} bytes)")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a .safetensors file (header is not JSON: {_one_line(exc)})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a .safetensors file (header is not a JSON object)")
    return header, 8 + length


def _load_safetensors(path: str, key):
    header, start = read_safetensors_header(path)
    key = _pick(path, [name for name in header if name != "__metadata__"], key, "tensor")
    where = f"{path}:{key}"
    info = header[key]
    try:
        dtype_name = str(info["dtype"])
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: malformed .safetensors entry ({_one_line(exc)})") from None
    if dtype_name not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{where}: unsupported dtype {dtype_name!r} (supported: "
                         f"{', '.join(_SAFETENSORS_DTYPES)})")
    dtype = _SAFETENSORS_DTYPES[dtype_name]
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if any(s < 0 for s in shape) or begin < 0 or end < begin or end - begin != count * dtype.itemsize:
        raise ValueError(f"{where}: malformed .safetensors entry (shape {list(shape)} of {dtype_name} "
                         f"needs {count * dtype.itemsize} bytes, data_offsets give {end - begin})")
    if start + end > os.path.getsize(path):
        raise ValueError(f"{where}: truncated .safetensors file (data ends at byte {start + end}, "
                         f"file has {os.path.getsize(path)})")
    with open(path, "rb") as f:
        f.seek(start + begin)
        buf = f.read(end - begin)
    arr = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)
    if dtype_name == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif dtype_name == "BOOL" and count and int(np.frombuffer(buf, np.uint8).max()) > 1:
        raise ValueError(f"{where}: BOOL tensor holds bytes other than 0 and 1")
    return _checked(arr.astype(arr.dtype.newbyteorder("="), copy=True), where)


# -- csv ------------------------------------------------------------------------------------------

def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _delimiter(path: str, first_line: str) -> str:
    if path.lower().endswith(".tsv"):
        return "\t"
    if "," in first_line:
        return ","
    if "\t" in first_line:
        return "\t"
    if ";" in first_line:
        return ";"
    return ","


def _column_index(token: str, header: list[str] | None, width: int, path: str) -> int:
    if header is not None and token in header:
        return header.index(token)
    try:
        i = int(token)
    except ValueError:
        names = f"columns {_keys_text(header)}" if header is not None else "no header row (select columns by index)"
        raise ValueError(f"{path}: no column {token!r}; it has {names}") from None
    if not -width <= i < width:
        raise ValueError(f"{path}: column index {i} out of range; it has {width} column(s)")
    return i % width


def _load_csv(path: str, key):
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            text = f.read()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not a text CSV file ({_one_line(exc)})") from None
    lines = [(no, line) for no, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path}: holds no rows")
    delim = _delimiter(path, lines[0][1])
    rows = [(no, [c.strip() for c in cells])
            for (no, _), cells in zip(lines, csv.reader(io.StringIO("\n".join(l for _, l in lines)), delimiter=delim))]
    header = None
    if not all(_is_number(c) for c in rows[0][1]):
        header = rows[0][1]
        rows = rows[1:]
        if not rows:
            raise ValueError(f"{path}: holds a header row and no data")
    width = len(header) if header is not None else len(rows[0][1])
    for no, cells in rows:
        if len(cells) != width:
            raise ValueError(f"{path}: line {no} has {len(cells)} column(s), expected {width}")
    columns = list(range(width))
    if key is not None:
        columns = [_column_index(tok.strip(), header, width, path) for tok in key.split(",") if tok.strip()]
        if not columns:
            raise ValueError(f"{path}: empty column selection {key!r}")
    cells = np.array([[r[1][c] for c in columns] for r in rows], dtype=str)
    arr = None
    try:
        arr = cells.astype(np.int64)
    except (ValueError, OverflowError):
        try:
            arr = cells.astype(np.float64)
        except ValueError:
            pass
    if arr is None:
        for no, r in rows:
            for c in columns:
                if not _is_number(r[c]):
                    what = "an empty cell" if r[c] == "" else f"{r[c]!r}, not a number"
                    name = f" ({header[c]!r})" if header is not None else ""
                    raise ValueError(f"{path}: line {no}, column {c}{name}: {what}")
        raise ValueError(f"{path}: holds non-numeric data")  # pragma: no cover
    return arr[:, 0] if arr.shape[1] == 1 else arr

"""Builds a program that runs CUDA kernels of src/cuda on the CPU (see include/cuda_runtime.h):
the tree of src/cuda copied with every launch ``kernel<<<grid, block, shared, stream>>>(args)``
written as ``emu::launch(kernel, grid, block, shared, stream, args)`` (and ``extern __shared__``
arrays as pointers to the launch's buffer), and compiled by g++ with
the stand-ins of include/ found before the real headers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\(", re.S)
DYNAMIC = re.compile(r"extern __shared__ (?:__align__\(\d+\) )?([\w ]+?) (\w+)\[\];")

AVAILABLE = shutil.which("g++") is not None and sys.platform.startswith("linux")  # ucontext
REASON = "needs g++ and ucontext (Linux)"


def emulated(text: str) -> str:
    """The source with its launches rewritten, and its dynamic shared arrays pointed at the
    launch's buffer (emu::dynamic_shared)."""
    out, launches = LAUNCH.subn(r"emu::launch(\1, \2, ", text)
    assert launches == text.count("<<<"), "a launch the rewrite does not recognise"
    out, arrays = DYNAMIC.subn(r"\1* \2 = reinterpret_cast<\1*>(emu::dynamic_shared);", out)
    assert arrays == text.count("extern __shared__"), "a dynamic shared array the rewrite does not recognise"
    return out


def build(folder: Path, sources: list[str], harness: str) -> Path:
    """The program of ``sources`` (paths under src/cuda) and ``harness`` (a file beside this one),
    built in ``folder``."""
    tree = folder / "cuda"
    for path in (ROOT / "src" / "cuda").rglob("*"):
        shadowed = (HERE / "include" / path.relative_to(ROOT / "src" / "cuda")).exists()
        if path.suffix in (".cu", ".cuh", ".hpp", ".h") and not shadowed:  # (ptx.cuh: the stand-in's)
            target = tree / path.relative_to(ROOT / "src" / "cuda")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(emulated(path.read_text()))
    units = []
    for source in sources:
        unit = (tree / source).with_suffix(".cpp")
        unit.write_text((tree / source).read_text())
        units.append(str(unit))
    exe = folder / Path(harness).stem
    subprocess.run(["g++", "-std=c++17", "-O2", "-ffp-contract=off", f"-I{HERE / 'include'}", f"-I{tree}",
                    f"-I{ROOT / 'src' / 'cpp'}", "-o", str(exe), *units, str(HERE / harness)],
                   check=True, capture_output=True, text=True)
    return exe


def run(exe: Path, *args, timeout: int = 600) -> tuple[str, int]:
    """(stdout and stderr, exit status) of the program."""
    done = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr, done.returncode

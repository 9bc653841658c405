"""The CUDA grid kNN path (src/cuda/knn/grid.cu) run on the CPU, where no GPU is: its kernels
compiled by g++ against a CUDA stand-in (tests/emulated_cuda/include: threads as fibers, warp
collectives carried out when every live lane has reached them, host memory, cub's sorts and
scans), and every answer compared bit for bit with a brute force written from the contract
(tests/emulated_cuda/grid_check.cpp): kNN lists and strict / non-strict counts, float32 and
float64, both metrics, self-joins and queries, ties, duplicates, non-finite coordinates, a
column without spread, column blocks of wider matrices. The GPU tests (test_knn_gpu.py) hold
the same code to the CPU engine on a real device; this one runs everywhere, in CI too."""

import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "emulated_cuda"

pytestmark = pytest.mark.skipif(shutil.which("g++") is None or not sys.platform.startswith("linux"),
                                reason="needs g++ and ucontext (Linux)")


def emulated(source: Path) -> str:
    """The CUDA source with every launch ``kernel<<<grid, block, shared, stream>>>(args)``
    written as ``emu::launch(kernel, grid, block, shared, stream, args)``."""
    text = source.read_text()
    out, launches = re.subn(r"([A-Za-z_]\w*(?:<[^<>;()]*>)?)<<<(.*?)>>>\(", r"emu::launch(\1, \2, ", text)
    assert launches == text.count("<<<") > 0, "a launch the rewrite does not recognise"
    return out


def build(folder: Path) -> Path:
    """grid_check, built in ``folder``."""
    (folder / "grid.cpp").write_text(emulated(ROOT / "src" / "cuda" / "knn" / "grid.cu"))
    exe = folder / "grid_check"
    subprocess.run(["g++", "-std=c++17", "-O2", "-ffp-contract=off", f"-I{HERE / 'include'}",
                    f"-I{ROOT / 'src' / 'cuda'}", "-o", str(exe), str(folder / "grid.cpp"), str(HERE / "grid_check.cpp")],
                   check=True, capture_output=True, text=True)
    return exe


@pytest.fixture(scope="module")
def grid_check(tmp_path_factory):
    return build(tmp_path_factory.mktemp("emulated_cuda"))


def _run(grid_check, *args):
    seed = random.randrange(1 << 31)
    run = subprocess.run([str(grid_check), str(seed), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"seed {seed}:\n{run.stdout[-3000:]}{run.stderr[-2000:]}"
    summary = run.stdout.strip().splitlines()[-1]
    return map(int, re.match(r"(\d+) cases, (\d+) through the grid, (\d+) failed", summary).groups())


def test_the_grid_kernels_equal_brute_force_bit_for_bit(grid_check):
    cases, grid, failed = _run(grid_check, 300)  # 2 to 300 points, dim 1 to 8, k 1 to 32
    # not vacuous: the grid answered a good share (the rest: too few points, dim 1 counts, no spread)
    assert failed == 0 and grid > cases // 4


@pytest.mark.parametrize("n, dim, k", [(3000, 2, 1), (2500, 8, 32)])
def test_many_cells_and_rings_equal_brute_force(grid_check, n, dim, k):
    cases, grid, failed = _run(grid_check, n, dim, k)
    assert failed == 0 and grid == cases  # every kind of data through the grid (one column with spread suffices)


if __name__ == "__main__":  # python tests/test_grid_emulated.py ARGS: grid_check ARGS (see grid_check.cpp)
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        sys.exit(subprocess.run([str(build(Path(folder))), *sys.argv[1:]]).returncode)

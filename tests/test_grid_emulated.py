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
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "emulated_cuda"))
import emulation  # noqa: E402

pytestmark = pytest.mark.skipif(not emulation.AVAILABLE, reason=emulation.REASON)


def build(folder: Path) -> Path:
    """grid_check, built in ``folder``."""
    return emulation.build(folder, ["knn/grid.cu", "knn/knn.cu", "knn/count.cu"], "grid_check.cpp")


@pytest.fixture(scope="module")
def grid_check(tmp_path_factory):
    return build(tmp_path_factory.mktemp("emulated_cuda"))


def _run(grid_check, *args):
    seed = random.randrange(1 << 31)
    out, status = emulation.run(grid_check, seed, *args)
    assert status == 0, f"seed {seed}:\n{out[-5000:]}"
    summary = [line for line in out.strip().splitlines() if " cases, " in line][-1]
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
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        sys.exit(subprocess.run([str(build(Path(folder))), *sys.argv[1:]]).returncode)

#!/usr/bin/env bash
# Everything a lent GPU is for, in one call (a lease is short and each start costs minutes):
# build for the card, every gpu test, a memory check of the CUDA kNN paths on small inputs, and
# the GPU benchmarks. Each stage has its own time limit, so a slow one cannot eat the others'.
# Logs go under $OUT (the device tool's folder that comes back), or ./gpu_out; the summary and
# the tails that matter are printed last, where the device tool's reply shows them.
#
#     bash bench/gpu_check.sh          # about 8 minutes on an H100/H200
#     bash bench/gpu_check.sh quick    # benchmarks at N = 1e5: about 3 minutes
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
quick=${1:-}
py=python3

stage() {  # stage NAME SECONDS COMMAND...: run it, log it, one summary line
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc, $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv > "$OUT/card.txt" 2>&1
$py -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" >> "$OUT/card.txt" 2>&1

# only the card's own architecture: half the compile time of the default sm_80 + sm_90
arch=$($py -c "import torch; a, b = torch.cuda.get_device_capability(); print(f'{a}{b}')" 2>/dev/null || echo 90)
stage build 480 $py -m pip install --no-build-isolation --no-deps -v \
    -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" .
stage tests 300 $py -m pytest -q -m gpu -p no:cacheprovider tests
# the grid and brute-force kNN kernels under memcheck, on the small cases (the sanitizer slows
# every launch by orders of magnitude; torch's own allocations are not reported as leaks)
stage memcheck 240 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 \
    $py -m pytest -q -m gpu -p no:cacheprovider -x tests/test_knn_gpu.py \
    -k "grid_small_n or all_points or column_blocks or non_finite or queries_allow"
if [ "$quick" = quick ]; then
    stage knn_bench 240 $py bench/knn_gpu.py --quick
    stage head_bench 120 $py bench/head_kernel.py --device cuda --quick
else
    stage knn_bench 420 $py bench/knn_gpu.py
    stage head_bench 180 $py bench/head_kernel.py --device cuda
fi

echo; cat "$OUT/card.txt"
echo; cat "$OUT/summary.txt"
for name in tests memcheck; do
    echo; echo "== $name (last lines)"; tail -n 15 "$OUT/$name.log"
done
for name in knn_bench head_bench; do
    echo; echo "== $name (tables)"; grep -E '^\||^#|floor|rate|bandwidth' "$OUT/$name.log" | tail -n 40
done
grep -q "exit 0" "$OUT/summary.txt"

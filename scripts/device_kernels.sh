#!/usr/bin/env bash
# Kernel tests and the full kernel benchmark on the GPU machine, in one device call (<= 10 min:
# install ~10 s, tests at most 330 s, benchmark at most 240 s).
# Usage (repo root): bash scripts/device_kernels.sh
# Writes 4 files to $OUT: gpu.txt, pytest_kernels.log, bench_kernels.log, bench_kernels.json.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Install log outside $OUT (file budget); shown only on failure.
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/install_kernels.log 2>&1 \
    || { cat /tmp/install_kernels.log; exit 1; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)"
    git rev-parse --short HEAD 2>/dev/null || true
} 2>&1 | tee "$OUT/gpu.txt"

# On CUDA the tests run the kernels at real sizes (Triton compiles, no interpreter; compiling
# and autotuning dominate). 330 s at most: SIGINT at 320 s lets pytest print its summary and
# the slowest tests, SIGKILL 10 s later if it has not stopped.
timeout -s INT -k 10 320 python3 -m pytest tests/kernels -q -x -p no:cacheprovider --durations=15 \
    >"$OUT/pytest_kernels.log" 2>&1
rc_test=$?
tail -n 25 "$OUT/pytest_kernels.log"

# Full run (prefill 4K-16K x 8K-64K, decode 8K-128K with the split sweep); JSON to $OUT.
OUT="$OUT" timeout 240 python3 benchmarks/bench_kernels.py >"$OUT/bench_kernels.log" 2>&1
rc_bench=$?
grep -E "^(FAIL|checks done|device|best forced|split-K autotune|decode [0-9]+ slots)" "$OUT/bench_kernels.log"
tail -n 22 "$OUT/bench_kernels.log"

echo "pytest rc=$rc_test (2 or 124/137: interrupted at the time limit), bench rc=$rc_bench (124: time limit)"
[ "$rc_test" -eq 0 ] && [ "$rc_bench" -eq 0 ]

#!/usr/bin/env bash
# Where decode time goes at small buffers, in one device call (<= 9 min): the decode grid of
# benchmarks/bench_kernels.py (split-kernel shapes timed cold against the default) and an
# Nsight Compute profile of the default and three other shapes at 8K and 16K slots.
# Usage (repo root): bash scripts/device_decode_profile.sh  (GRID=0: the profile only)
# Writes to $OUT: gpu.txt, grid.log, bench_kernels.json, ncu_run.log, ncu_details.csv,
# ncu_raw.csv, ncu_source.csv (SASS lines with their samples), decode.ncu-rep (if < 15 MB).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/install.log 2>&1 \
    || { cat /tmp/install.log; exit 1; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
        --format=csv,noheader
    python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__,
        triton.__version__)"
    cat REV 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || true
    which ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null
} 2>&1 | tee "$OUT/gpu.txt"

SLOTS=${SLOTS:-8192 12416 16384 32768 65536}
if [ "${GRID:-1}" = 1 ]; then
    OUT="$OUT" timeout ${GRID_S:-280} python3 benchmarks/bench_kernels.py --only decode \
        --decode-grid --decode-slots $SLOTS >"$OUT/grid.log" 2>&1
    echo "grid rc=$?"
    grep -E "^(FAIL|checks|device|decode grid [0-9]+ slots:)" "$OUT/grid.log"
fi

NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -z "$NCU" ]; then echo "no ncu here"; exit 0; fi
# Clocks as found (METHOD.md); every kernel of the run whose name holds ssa_attn.
timeout ${NCU_S:-220} "$NCU" --clock-control none -k regex:ssa_attn --set full -f -o /tmp/decode \
    python3 benchmarks/bench_kernels.py --ncu-decode --decode-slots 8192 16384 \
    >"$OUT/ncu_run.log" 2>&1
echo "ncu rc=$?"
tail -n 5 "$OUT/ncu_run.log"
"$NCU" -i /tmp/decode.ncu-rep --page details --csv >"$OUT/ncu_details.csv" 2>&1
"$NCU" -i /tmp/decode.ncu-rep --page raw --csv >"$OUT/ncu_raw.csv" 2>&1
"$NCU" -i /tmp/decode.ncu-rep --page source --print-source sass --csv 2>&1 | head -c 15000000 \
    >"$OUT/ncu_source.csv"
ls -l /tmp/decode.ncu-rep "$OUT"
[ "$(stat -c %s /tmp/decode.ncu-rep)" -lt 15000000 ] && cp /tmp/decode.ncu-rep "$OUT/"
grep -E "Duration|DRAM Throughput|Registers Per|Achieved Occupancy" "$OUT/ncu_details.csv" \
    | cut -c1-220 | head -40

#!/usr/bin/env bash
# Call 2: decode with the scalar range mapping (new) against the [BLOCK_N, RANGES_PAD] one of
# 190006e (old), same run, alternating; then the Nsight profile of the new one.
set -u
mkdir -p $OUT; export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
cp kernels/tier_attention_triton.py /tmp/new_tier.py
bench() {  # $1 label, $2 kernel file, rest: slots
    local label=$1 file=$2; shift 2
    cp "$file" kernels/tier_attention_triton.py
    OUT=/tmp/b_$label timeout 150 python3 benchmarks/bench_kernels.py --only decode --no-sweep \
        --key-loop flat --combine separate_pdl --decode-slots "$@" >/tmp/bench_$label.log 2>&1
    echo "$label rc=$?"
    cat /tmp/bench_$label.log >>"$OUT/bench_${label%?}.log"
    grep -E "^(FAIL|checks:|device)|slots, cold" /tmp/bench_$label.log | cut -c1-200
}
bench old1 old_tier_attention_triton.py 8192 12416 16384 32768 65536 131072
bench new1 /tmp/new_tier.py 8192 12416 16384 32768 65536 131072
bench old2 old_tier_attention_triton.py 8192 12416 16384
bench new2 /tmp/new_tier.py 8192 12416 16384
cp /tmp/new_tier.py kernels/tier_attention_triton.py
cp /tmp/b_new1/bench_kernels.json $OUT/bench_new1.json; cp /tmp/b_old1/bench_kernels.json $OUT/bench_old1.json
GRID=0 NCU_S=150 bash scripts/device_decode_profile.sh 2>&1 | tail -12
rm -f $OUT/ncu_source.csv.gz; gzip -f $OUT/ncu_source.csv; rm -f $OUT/gpu.txt $OUT/ncu_run.log
ls $OUT

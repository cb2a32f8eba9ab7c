#!/usr/bin/env bash
# One device call: the needle benchmark split over several processes per GPU (the tiny model
# leaves a GPU mostly idle: a cell is host-bound prefill), joined into one report.
# Usage (on the GPU machine, repo root; bench_data/haystack_stdlib.npz must travel with carry):
#   PROCS=20 MINUTES=7.5 bash scripts/device_needle.sh [extra ssa_code.bench.needle options]
# Writes to $OUT: needle.json, needle.md, needle_<method>.png (merged), shards/s<i>.json and
# shards/s<i>.log (each process), gpu.txt. Seconds per cell are with PROCS processes sharing
# the GPUs and CPU cores, so they are not single-process timings.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/shards"
PROCS=${PROCS:-16}; MINUTES=${MINUTES:-7.5}
TOKENS=${TOKENS:-bench_data/haystack_stdlib.npz}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/install.log 2>&1 \
    || { tail -n 30 /tmp/install.log; exit 1; }
GPUS=$(nvidia-smi -L | wc -l)
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; free -g | head -2
  echo "procs $PROCS over $GPUS GPUs, $MINUTES minutes each; rev $(cat REV 2>/dev/null)"; } | tee "$OUT/gpu.txt"
WORK=/tmp/needle_shards; rm -rf "$WORK"; mkdir -p "$WORK"
for ((i = 0; i < PROCS; i++)); do
    CUDA_VISIBLE_DEVICES=$((i % GPUS)) python3 -m ssa_code.bench.needle --tokens "$TOKENS" \
        --out "$WORK/s$i" --max-minutes "$MINUTES" --shard "$i/$PROCS" "$@" >"$WORK/s$i.log" 2>&1 &
done
wait
for ((i = 0; i < PROCS; i++)); do
    cp "$WORK/s$i.log" "$OUT/shards/"; cp "$WORK/s$i/needle.json" "$OUT/shards/s$i.json" 2>/dev/null \
        || { echo "shard $i wrote no needle.json:"; tail -n 5 "$WORK/s$i.log"; }
done
python3 -m ssa_code.bench.needle --merge "$WORK"/s*/ --out "$OUT" >"$OUT/merge.log" 2>&1
rc=$?
cat "$OUT/merge.log" | head -60
exit $rc

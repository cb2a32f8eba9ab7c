#!/usr/bin/env bash
# One device call: the needle benchmark split over several processes per GPU (the tiny model
# leaves a GPU mostly idle: a cell is host-bound prefill), joined into one report.
# Usage (on the GPU machine, repo root; bench_data/haystack_stdlib.npz must travel with carry):
#   PROCS=20 MINUTES=7.5 bash scripts/device_needle.sh [extra ssa_code.bench.needle options]
# GPU_LIST (default: every GPU) names the GPUs to use, e.g. GPU_LIST="1"; SKIP_INSTALL=1 skips
# the editable install (a caller that did it already).
# Writes to $OUT: needle.json and needle.md (merged), and extras.tgz (the heatmaps, every
# shard's needle.json and log, gpu.txt): the device returns at most 8 files. Seconds per cell
# are with PROCS processes sharing the GPUs and CPU cores, not single-process timings.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PROCS=${PROCS:-16}; MINUTES=${MINUTES:-7.5}
TOKENS=${TOKENS:-bench_data/haystack_stdlib.npz}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ -z "${SKIP_INSTALL:-}" ]; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/install.log 2>&1 \
        || { tail -n 30 /tmp/install.log; exit 1; }
fi
read -r -a GPUS <<<"${GPU_LIST:-$(nvidia-smi --query-gpu=index --format=csv,noheader | tr '\n' ' ')}"
WORK=$(mktemp -d /tmp/needle_XXXX)
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; free -g | head -2
  echo "procs $PROCS on GPUs ${GPUS[*]}, $MINUTES minutes each; rev $(cat REV 2>/dev/null); args $*"; } \
    | tee "$WORK/gpu.txt"
for ((i = 0; i < PROCS; i++)); do
    CUDA_VISIBLE_DEVICES=${GPUS[$((i % ${#GPUS[@]}))]} python3 -m ssa_code.bench.needle --tokens "$TOKENS" \
        --out "$WORK/s$i" --max-minutes "$MINUTES" --shard "$i/$PROCS" "$@" >"$WORK/s$i.log" 2>&1 &
done
wait
for ((i = 0; i < PROCS; i++)); do
    [ -f "$WORK/s$i/needle.json" ] || { echo "shard $i wrote no needle.json:"; tail -n 5 "$WORK/s$i.log"; }
done
python3 -m ssa_code.bench.needle --merge "$WORK"/s*/ --out "$WORK/merged" >"$WORK/merge.log" 2>&1
rc=$?
cp "$WORK/merged/needle.json" "$WORK/merged/needle.md" "$OUT/" 2>/dev/null
tar czf "$OUT/extras.tgz" -C "$WORK" --exclude='merged/needle.json' .
head -n 40 "$WORK/merge.log"
exit $rc

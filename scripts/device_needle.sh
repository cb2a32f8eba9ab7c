#!/usr/bin/env bash
# One device call: the needle benchmark split over several processes per GPU (the tiny model
# leaves a GPU mostly idle: a cell is host-bound prefill), joined into one report.
# Usage (on the GPU machine, repo root; bench_data/haystack_stdlib.npz must travel with carry):
#   PROCS=20 MINUTES=7.5 bash scripts/device_needle.sh [extra ssa_code.bench.needle options]
# GPU_LIST (default: every GPU) names the GPUs to use, e.g. GPU_LIST="1"; SKIP_INSTALL=1 skips
# the editable install (a caller that did it already). MPS=1 (default) shares each GPU between
# the processes through a CUDA MPS daemon started here (and stopped at the end) instead of
# time-slicing: a cell is many small kernels, and on an H200 14 processes ran 1M cells in about
# half the time (BENCHMARKS.md). If the daemon cannot start, or a CUDA context fails under it,
# the run goes on time-sliced; gpu.txt says which. A caller that runs a daemon already (its
# CUDA_MPS_PIPE_DIRECTORY set) keeps it.
# Writes to $OUT: needle.json and needle.md (merged), and extras.tgz (the heatmaps, every
# shard's needle.json and log, gpu.txt): the device returns at most 8 files. Seconds per cell
# are with PROCS processes sharing the GPUs and CPU cores, not single-process timings.
# A shard starts no cell it expects to end after MINUTES, but a cell already running can take
# longer: each shard is stopped after MINUTES plus GRACE seconds (default 60), and the report
# joins what the shards had written by then (each writes after every pass over the depths).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PROCS=${PROCS:-16}; MINUTES=${MINUTES:-7.5}; GRACE=${GRACE:-60}
HARD=$(python3 -c "print(int($MINUTES * 60 + $GRACE))")
TOKENS=${TOKENS:-bench_data/haystack_stdlib.npz}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ -z "${SKIP_INSTALL:-}" ]; then
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/install.log 2>&1 \
        || { tail -n 30 /tmp/install.log; exit 1; }
fi
read -r -a GPUS <<<"${GPU_LIST:-$(nvidia-smi --query-gpu=index --format=csv,noheader | tr '\n' ' ')}"
WORK=$(mktemp -d /tmp/needle_XXXX)
MPS_STATE="time-sliced (MPS=0)"; MPS_OURS=
if [ "${MPS:-1}" = 1 ] && [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ]; then
    MPS_STATE="CUDA MPS (the caller's daemon)"
elif [ "${MPS:-1}" = 1 ] && ! command -v nvidia-cuda-mps-control >/dev/null; then
    MPS_STATE="time-sliced (no nvidia-cuda-mps-control)"
elif [ "${MPS:-1}" = 1 ]; then
    MPS_DIR=$(mktemp -d /tmp/mps_XXXX)   # outside WORK: its sockets stay out of extras.tgz
    export CUDA_MPS_PIPE_DIRECTORY=$MPS_DIR/pipe CUDA_MPS_LOG_DIRECTORY=$MPS_DIR/log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d \
        && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
        MPS_STATE="CUDA MPS"; MPS_OURS=1
    else
        echo quit | nvidia-cuda-mps-control 2>/dev/null
        unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        MPS_STATE="time-sliced (the MPS daemon failed)"
    fi
fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; free -g | head -2
  echo "procs $PROCS on GPUs ${GPUS[*]}, $MINUTES minutes each, $MPS_STATE; rev $(cat REV 2>/dev/null); args $*"; } \
    | tee "$WORK/gpu.txt"
for ((i = 0; i < PROCS; i++)); do
    CUDA_VISIBLE_DEVICES=${GPUS[$((i % ${#GPUS[@]}))]} timeout -k 10 "$HARD" \
        python3 -m ssa_code.bench.needle --tokens "$TOKENS" \
        --out "$WORK/s$i" --max-minutes "$MINUTES" --shard "$i/$PROCS" "$@" >"$WORK/s$i.log" 2>&1 &
done
wait
[ -n "$MPS_OURS" ] && echo quit | nvidia-cuda-mps-control
DONE=()
for ((i = 0; i < PROCS; i++)); do
    if [ -f "$WORK/s$i/needle.json" ]; then DONE+=("$WORK/s$i"); else
        echo "shard $i wrote no needle.json:"; tail -n 5 "$WORK/s$i.log"; fi
done
if [ ${#DONE[@]} -eq 0 ]; then
    echo "no shard wrote a report" >"$WORK/merge.log"; rc=1
else
    python3 -m ssa_code.bench.needle --merge "${DONE[@]}" --out "$WORK/merged" >"$WORK/merge.log" 2>&1
    rc=$?
fi
cp "$WORK/merged/needle.json" "$WORK/merged/needle.md" "$OUT/" 2>/dev/null
tar czf "$OUT/extras.tgz" -C "$WORK" --exclude='merged/needle.json' .
head -n 40 "$WORK/merge.log"
exit $rc

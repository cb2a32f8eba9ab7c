#!/usr/bin/env bash
# One device call: train the tiny model on every GPU of the machine (data parallel through
# torch.distributed.run when there are several) and pack the checkpoint for the trip back.
# Usage (on the GPU machine, repo root; the tokenizer files under ssa_code/models/tiny must be
# there, the old weights need not):
#   MINUTES=9.15 bash scripts/device_train.sh [train_tiny.py options, e.g. --compile]
# NGPU (default: every GPU nvidia-smi lists) sets the number of processes.
# Writes to $OUT: gpu.txt, stdout.log, train.log, model_card.md, loss.json and the checkpoint as
# tiny.tar.part_aa, _ab, ... (15 MiB each: the device returns files of at most 16 MiB).
# Back here: cat tiny.tar.part_* | tar -x -C <folder>   (gives <folder>/tiny/)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
MINUTES=${MINUTES:-9.15}
NGPU=${NGPU:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)}
if [ "$NGPU" -lt 1 ]; then
    echo "error: no GPU found (set NGPU, or run scripts/train_tiny.py --cpu-smoke on a CPU)" >&2
    exit 2
fi
WORK=$(mktemp -d /tmp/train_XXXX)
export PYTHONUNBUFFERED=1 PYTHONPATH=.
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  echo "processes $NGPU; $MINUTES minutes; rev $(cat REV 2>/dev/null); args $*"; } >"$OUT/gpu.txt"
if [ "$NGPU" -gt 1 ]; then
    python3 -m torch.distributed.run --standalone --nproc_per_node "$NGPU" scripts/train_tiny.py \
        --minutes "$MINUTES" --out "$WORK" "$@" >"$OUT/stdout.log" 2>&1
else
    python3 scripts/train_tiny.py --minutes "$MINUTES" --out "$WORK" "$@" >"$OUT/stdout.log" 2>&1
fi
rc=$?
cp "$WORK/train.log" "$WORK/model_card.md" "$WORK/loss.json" "$OUT/" 2>/dev/null
if [ -d "$WORK/tiny" ]; then
    tar -cf "$WORK/tiny.tar" -C "$WORK" tiny && split -b 15M "$WORK/tiny.tar" "$OUT/tiny.tar.part_"
fi
tail -n 15 "$OUT/stdout.log"
exit $rc

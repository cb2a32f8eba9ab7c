# Device call 17, from a snapshot of HEAD (.snap, REV names the commit): seeds 12 and 13 at 1M
# (fresh, jittered) with the needle's SSA configuration, which now reads the cue under two
# neighbour choices (exact_tries=1,2, adopted by call 14's rule after seeds 10-11), the shipped
# single choice (`ship`) and b1a2 as paired variants on the same prefill. 14 processes share the
# GPU through CUDA MPS (device_needle.sh starts it; call 16: about twice the cells per minute of
# time-slicing). Results straight to $OUT: log.txt, seed12/ and seed13/ with needle.json,
# needle.md, extras.tgz.
set -u
T0=$(date +%s); END=${END:-470}   # seconds after T0 by which every process must have stopped
mkdir -p $OUT/seed12 $OUT/seed13 ssa_code/models bench_data /tmp/r
L=$OUT/log.txt
ln -sfn ../../../ssa_code/models/tiny ssa_code/models/tiny
ln -sfn ../../bench_data/haystack_stdlib.npz bench_data/haystack_stdlib.npz
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/r/install.log 2>&1 || { tail -20 /tmp/r/install.log; exit 1; }
{ nvidia-smi --query-gpu=name --format=csv,noheader; free -g | head -2; cat REV; } | tee $L
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
COMMON="--methods ssa --chunk-size 2048 --no-warmup --lengths 1m --keys 1,4 --depths 20 --jitter 16384"
V="--question-variant ship:exact_tries= --question-variant b1a2:exact_before=1;exact_after=2;exact_tries="
for SEED in 12 13; do
    LEFT=$(( T0 + END - $(date +%s) - 15 ))
    [ $LEFT -lt 90 ] && { echo "seed $SEED: only $LEFT s left, not started" | tee -a $L; break; }
    MIN=$(python3 -c "print(round(min(${MIN:-3.3}, ($LEFT - 30) / 60), 2))")
    echo "seed $SEED: $MIN minutes" | tee -a $L
    OUT=$OUT/seed$SEED PROCS=${PROCS:-14} MINUTES=$MIN GRACE=25 SKIP_INSTALL=1 bash scripts/device_needle.sh $COMMON --seed $SEED $V >> $L 2>&1
done
echo "took $(( $(date +%s) - T0 )) s" | tee -a $L

# Device call 12 (NVIDIA H100 80GB HBM3), code at 6dc308e, run from a snapshot of the repository
# (the tiny model and the haystack linked in): the misses of seeds 1-7 with question variants,
# then seed 8. The H200 seeds' retries stopped at once (their haystack's git tree id differs;
# --retry accepts that since ca968b9, see call 13).
set -u
mkdir -p $OUT ssa_code/models bench_data /tmp/r
ln -sfn ../../../ssa_code/models/tiny ssa_code/models/tiny
ln -sfn ../../bench_data/haystack_stdlib.npz bench_data/haystack_stdlib.npz
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/r/install.log 2>&1 || { tail -20 /tmp/r/install.log; exit 1; }
{ nvidia-smi --query-gpu=name --format=csv,noheader; command -v nvidia-cuda-mps-control; nproc; free -g | head -2; } | tee /tmp/r/gpu.txt
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V="--question-variant b1:exact_before=1 --question-variant a2:exact_after=2 --question-variant b1a2:exact_before=1;exact_after=2 --question-variant a0:exact_after=0"
R="benchmarks/results/needle_h200_ckpt3_ssa16/seed1 benchmarks/results/needle_h200_ckpt3_ssa16/seed2 benchmarks/results/needle_h200_ckpt3_ssa16/seed3 benchmarks/results/needle_h200_ckpt3_ssa16/seed5 benchmarks/results/needle_h100_ckpt3_ssa16/seed6 benchmarks/results/needle_h100_ckpt3_ssa16/seed7"
T0=$(date +%s)
timeout 300 python3 benchmarks/needle_retry.py --out /tmp/r --label misses --procs 12 --minutes 4 $R -- $V > /tmp/r/misses.txt 2>&1
echo "retry took $(( $(date +%s) - T0 )) s"; cat /tmp/r/misses.txt
LEFT=$(( 520 - ($(date +%s) - T0) ))
MIN=$(python3 -c "print(round(max(1.0, ($LEFT - 75) / 60), 2))")
echo "seed 8 with MINUTES=$MIN"
OUT=/tmp/r/seed8 PROCS=14 MINUTES=$MIN GRACE=40 SKIP_INSTALL=1 bash scripts/device_needle.sh --methods ssa --chunk-size 2048 --no-warmup --lengths 1m --keys 1,4 --depths 20 --seed 8 --jitter 16384 $V > /tmp/r/seed8.txt 2>&1
tail -5 /tmp/r/seed8.txt
tar czf $OUT/call1.tgz -C /tmp r

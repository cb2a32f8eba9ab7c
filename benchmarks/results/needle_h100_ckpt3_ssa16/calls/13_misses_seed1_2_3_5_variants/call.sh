# Device call 13 (NVIDIA H100 80GB HBM3), code at e270898, from a snapshot as in call 12: the H200
# seeds' misses with question variants beside seed 9. The retry driver was stopped by its timeout
# while joining the shards; they were joined afterwards with `python -m ssa_code.bench.needle --merge`.
set -u
mkdir -p $OUT ssa_code/models bench_data /tmp/r
ln -sfn ../../../ssa_code/models/tiny ssa_code/models/tiny
ln -sfn ../../bench_data/haystack_stdlib.npz bench_data/haystack_stdlib.npz
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/r/install.log 2>&1 || { tail -20 /tmp/r/install.log; exit 1; }
{ nvidia-smi --query-gpu=name --format=csv,noheader; free -g | head -2; } | tee /tmp/r/gpu.txt
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V="--question-variant b1:exact_before=1 --question-variant a2:exact_after=2 --question-variant b1a2:exact_before=1;exact_after=2 --question-variant b1a2k8:exact_before=1;exact_after=2;exact_top_k=8 --question-variant k8:exact_top_k=8"
R="benchmarks/results/needle_h200_ckpt3_ssa16/seed1 benchmarks/results/needle_h200_ckpt3_ssa16/seed2 benchmarks/results/needle_h200_ckpt3_ssa16/seed3 benchmarks/results/needle_h200_ckpt3_ssa16/seed5"
T0=$(date +%s)
timeout 185 python3 benchmarks/needle_retry.py --out /tmp/r --label misses --procs 7 --minutes 4 $R -- $V > /tmp/r/misses.txt 2>&1 &
OUT=/tmp/r/seed9 PROCS=9 MINUTES=2.0 GRACE=55 SKIP_INSTALL=1 bash scripts/device_needle.sh --methods ssa --chunk-size 2048 --no-warmup --lengths 1m --keys 1,4 --depths 20 --seed 9 --jitter 16384 $V > /tmp/r/seed9.txt 2>&1
wait
echo "took $(( $(date +%s) - T0 )) s"; cat /tmp/r/misses.txt; tail -3 /tmp/r/seed9.txt
tar czf $OUT/call2.tgz -C /tmp r

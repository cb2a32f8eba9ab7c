# Device call 15, from a snapshot of HEAD (.snap, REV names the commit): seed 11 at 1M (fresh,
# jittered), run as call 14 (exact_tries=1,2, the shipped choice and b1a2 as paired variants on
# the same prefill), all 14 processes on the needle. Results go straight to $OUT (needle.json,
# needle.md, extras.tgz under $OUT/seed11) so a call cut off still returns what was written.
set -u
mkdir -p $OUT/seed11 ssa_code/models bench_data /tmp/r
ln -sfn ../../../ssa_code/models/tiny ssa_code/models/tiny
ln -sfn ../../bench_data/haystack_stdlib.npz bench_data/haystack_stdlib.npz
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/r/install.log 2>&1 || { tail -20 /tmp/r/install.log; exit 1; }
{ nvidia-smi --query-gpu=name --format=csv,noheader; free -g | head -2; cat REV; } | tee $OUT/gpu.txt
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V="--question-variant ship:exact_tries= --question-variant b1a2:exact_before=1;exact_after=2;exact_tries="
T0=$(date +%s)
OUT=$OUT/seed11 PROCS=${PROCS:-14} MINUTES=${MIN:-6.3} GRACE=45 SKIP_INSTALL=1 bash scripts/device_needle.sh --methods ssa --chunk-size 2048 --no-warmup --lengths 1m --keys 1,4 --depths 20 --seed 11 --jitter 16384 --ssa-set exact_tries=1,2 $V > $OUT/seed11.txt 2>&1
echo "took $(( $(date +%s) - T0 )) s"; tail -3 $OUT/seed11.txt

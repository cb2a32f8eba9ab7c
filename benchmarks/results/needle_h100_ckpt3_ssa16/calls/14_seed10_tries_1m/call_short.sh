# Device call 14, short form for the last ~250 s of a session's device time: the same run as
# call.sh (seed 10 at 1M, exact_tries=1,2, the same variants) with one cell per process, beside
# the GPU tests of SSA on CUDA; everything is written straight under $OUT so that a call cut off
# by the time limit still returns what it finished.
set -u
mkdir -p $OUT ssa_code/models bench_data
ln -sfn ../../../ssa_code/models/tiny ssa_code/models/tiny
ln -sfn ../../bench_data/haystack_stdlib.npz bench_data/haystack_stdlib.npz
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/install.log 2>&1 || { tail -20 /tmp/install.log; exit 1; }
{ nvidia-smi --query-gpu=name --format=csv,noheader; cat REV; } > $OUT/gpu.txt
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V="--question-variant ship:exact_tries= --question-variant b1a2:exact_before=1;exact_after=2;exact_tries= --question-variant t3:exact_tries=1,2,1,1 --question-variant m4:exact_margin=4;exact_tries= --question-variant tm4:exact_margin=4"
(timeout ${TT:-150} python3 -m pytest -q -p no:cacheprovider tests/attention/test_gpu.py > $OUT/gpu_tests.log 2>&1; echo "rc=$?" >> $OUT/gpu_tests.log) &
OUT=$OUT/seed10 PROCS=13 MINUTES=${MIN:-1.0} GRACE=${GRACE:-110} SKIP_INSTALL=1 bash scripts/device_needle.sh --methods ssa --chunk-size 2048 --no-warmup --lengths 1m --keys 1,4 --depths 20 --seed 10 --jitter 16384 --ssa-set exact_tries=1,2 $V > /dev/null 2>&1
wait
cat $OUT/gpu.txt; tail -2 $OUT/gpu_tests.log; head -20 $OUT/seed10/needle.md 2>/dev/null

# Device call 16, from a snapshot of HEAD (.snap, REV names the commit): the 27 cells of seed 10
# at 1M that call 14 left unrun (--resume over its report, copied into the snapshot as
# seed10_done), same configuration and question variants, beside the GPU tests of the kernels and
# of SSA on CUDA (the relaxed wider-tier test has not run on a GPU yet). Results go straight to
# $OUT so a call cut off still returns what was written.
set -u
mkdir -p $OUT/seed10b ssa_code/models bench_data /tmp/r
ln -sfn ../../../ssa_code/models/tiny ssa_code/models/tiny
ln -sfn ../../bench_data/haystack_stdlib.npz bench_data/haystack_stdlib.npz
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/r/install.log 2>&1 || { tail -20 /tmp/r/install.log; exit 1; }
{ nvidia-smi --query-gpu=name --format=csv,noheader; free -g | head -2; cat REV; } | tee $OUT/gpu.txt
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V="--question-variant ship:exact_tries= --question-variant b1a2:exact_before=1;exact_after=2;exact_tries= --question-variant t3:exact_tries=1,2,1,1 --question-variant m4:exact_margin=4;exact_tries= --question-variant tm4:exact_margin=4"
T0=$(date +%s)
(timeout ${TT:-420} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/attention/test_gpu.py tests/kernels} > $OUT/gpu_tests.log 2>&1; echo "rc=$?" >> $OUT/gpu_tests.log) &
OUT=$OUT/seed10b PROCS=${PROCS:-14} MINUTES=${MIN:-5.3} GRACE=45 SKIP_INSTALL=1 bash scripts/device_needle.sh --methods ssa --chunk-size 2048 --no-warmup --lengths 1m --keys 1,4 --depths 20 --seed 10 --jitter 16384 --ssa-set exact_tries=1,2 $V --resume seed10_done > $OUT/seed10b.txt 2>&1
wait
echo "took $(( $(date +%s) - T0 )) s"; tail -3 $OUT/gpu_tests.log; tail -3 $OUT/seed10b.txt

# Device call 14, from a snapshot of HEAD (.snap, REV names the commit): seed 10 at 1M (fresh,
# jittered) run with exact_tries=1,2 (the question read with the shipped choice and with one block
# in front and two behind, the surer first token answering) and question variants on each prefill
# (`ship`: the shipped choice alone), beside the GPU tests of the kernels and of SSA on CUDA (the
# wider tier, the margin and the tries are new there).
set -u
mkdir -p $OUT ssa_code/models bench_data /tmp/r
ln -sfn ../../../ssa_code/models/tiny ssa_code/models/tiny
ln -sfn ../../bench_data/haystack_stdlib.npz bench_data/haystack_stdlib.npz
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/r/install.log 2>&1 || { tail -20 /tmp/r/install.log; exit 1; }
{ nvidia-smi --query-gpu=name --format=csv,noheader; free -g | head -2; cat REV; } | tee /tmp/r/gpu.txt
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
V="--question-variant ship:exact_tries= --question-variant b1a2:exact_before=1;exact_after=2;exact_tries= --question-variant t3:exact_tries=1,2,1,1 --question-variant m4:exact_margin=4;exact_tries= --question-variant tm4:exact_margin=4"
T0=$(date +%s)
(timeout ${TT:-500} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/kernels tests/attention/test_gpu.py} > /tmp/r/gpu_tests.log 2>&1; echo "rc=$?" >> /tmp/r/gpu_tests.log) &
OUT=/tmp/r/seed10 PROCS=12 MINUTES=${MIN:-6.1} GRACE=45 SKIP_INSTALL=1 bash scripts/device_needle.sh --methods ssa --chunk-size 2048 --no-warmup --lengths 1m --keys 1,4 --depths 20 --seed 10 --jitter 16384 --ssa-set exact_tries=1,2 $V > /tmp/r/seed10.txt 2>&1
wait
echo "took $(( $(date +%s) - T0 )) s"; tail -3 /tmp/r/gpu_tests.log; tail -3 /tmp/r/seed10.txt
tar czf $OUT/call.tgz -C /tmp r

# Device call 16, from a snapshot of HEAD (.snap, REV names the commit): the 27 cells of seed 10
# at 1M that call 14 left unrun (--resume over its report, copied into the snapshot as
# seed10_done), same configuration and question variants, beside the GPU tests of the kernels and
# of SSA on CUDA (the relaxed wider-tier test has not run on a GPU yet). Then, if the time left
# holds a cell at the speed seed 10's cells ran, seed 11 (fresh, same configuration, the shipped
# choice and b1a2 as paired variants) until the call's end. Results go straight to $OUT (at most
# 8 files: log.txt, gpu_tests.log, seed10b/ and seed11/ with needle.json, needle.md, extras.tgz)
# so a call cut off still returns what was written.
# MPS=1 (default): the processes share the GPU through CUDA MPS instead of time-slicing (a cell is
# many small kernels from 14 processes); if the daemon cannot start or a CUDA context fails under
# it, the run goes on without it. log.txt says which.
set -u
T0=$(date +%s); END=${END:-535}   # seconds after T0 by which every process must have stopped
mkdir -p $OUT/seed10b $OUT/seed11 ssa_code/models bench_data /tmp/r
L=$OUT/log.txt
ln -sfn ../../../ssa_code/models/tiny ssa_code/models/tiny
ln -sfn ../../bench_data/haystack_stdlib.npz bench_data/haystack_stdlib.npz
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /tmp/r/install.log 2>&1 || { tail -20 /tmp/r/install.log; exit 1; }
{ nvidia-smi --query-gpu=name --format=csv,noheader; free -g | head -2; cat REV; } | tee $L
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
    mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
    if nvidia-cuda-mps-control -d && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
        echo "mps on" | tee -a $L
    else
        echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
        echo "mps failed, time-slicing" | tee -a $L
    fi
else
    echo "mps off" | tee -a $L
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
COMMON="--methods ssa --chunk-size 2048 --no-warmup --lengths 1m --keys 1,4 --depths 20 --jitter 16384 --ssa-set exact_tries=1,2"
V="--question-variant ship:exact_tries= --question-variant b1a2:exact_before=1;exact_after=2;exact_tries="
(timeout ${TT:-420} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/attention/test_gpu.py tests/kernels} > $OUT/gpu_tests.log 2>&1; echo "rc=$?" >> $OUT/gpu_tests.log) &
T1=$(date +%s)
OUT=$OUT/seed10b PROCS=${PROCS:-14} MINUTES=${MIN:-5.3} GRACE=45 SKIP_INSTALL=1 bash scripts/device_needle.sh $COMMON --seed 10 $V \
    --question-variant "t3:exact_tries=1,2,1,1" --question-variant "m4:exact_margin=4;exact_tries=" --question-variant "tm4:exact_margin=4" \
    --resume seed10_done >> $L 2>&1
NOW=$(date +%s); CELL=$(( (NOW - T1) / 2 ))   # seed 10's rest is two cells a process
LEFT=$(( T0 + END - NOW - 20 ))
echo "seed 10 rest took $(( NOW - T1 )) s; left $LEFT s" | tee -a $L
if [ $LEFT -gt $(( CELL * 6 / 5 + 30 )) ]; then
    MIN11=$(python3 -c "print(round(($LEFT - 30) / 60 - 0.05, 2))")
    OUT=$OUT/seed11 PROCS=${PROCS:-14} MINUTES=$MIN11 GRACE=25 SKIP_INSTALL=1 bash scripts/device_needle.sh $COMMON --seed 11 $V >> $L 2>&1
fi
wait
echo "took $(( $(date +%s) - T0 )) s" | tee -a $L; tail -3 $OUT/gpu_tests.log
[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] && echo quit | nvidia-cuda-mps-control
true

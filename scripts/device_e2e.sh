#!/usr/bin/env bash
# One device call: `ssa-code ask` end to end on a 100K-line repository (transformers' own source,
# committed into a fresh git repository) with a random-weight Qwen2.5-7B-architecture model.
# Usage (on the GPU machine, repo root; the run tool must carry the git-ignored .whl folder):
#   bash scripts/device_e2e.sh [extra benchmarks/e2e_ask.py options]
# Writes to $OUT: e2e.log (install, GPU, the script's output), e2e_ask.json, ask_stderr.log.
# Expected on an H200: about 4 minutes (model written 15.2 GB ~0.5 min, imports and load ~0.5 min,
# Triton compile ~0.5 min, 1.2M-token prefill ~2 min, 64 tokens a few seconds).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG="$OUT/e2e.log"
export PYTHONUNBUFFERED=1
{
  python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . &&
  # tree-sitter, gitpython (+ gitdb, smmap), platformdirs for the packer; accelerate for loading
  # the weights straight onto the GPU (transformers refuses a device_map without it).
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl
} >"$LOG" 2>&1 || { tail -n 40 "$LOG"; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, triton, transformers, accelerate; print(sys.version.split()[0], torch.__version__, triton.__version__, transformers.__version__, 'accelerate', accelerate.__version__)"
  free -g | head -2; df -h /tmp | tail -1; git --version
} 2>&1 | tee -a "$LOG"
timeout 500 python3 benchmarks/e2e_ask.py --out "$OUT" --time-limit 490 "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "--- ask_stderr.log (tail)"; tail -c 2000 "$OUT/ask_stderr.log" 2>/dev/null
echo "--- exit $rc"
exit "$rc"

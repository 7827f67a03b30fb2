#!/usr/bin/env bash
# compute-sanitizer's four tools over benchmarks/sanitize_cases.py (both backends, boundary routings).
# Run from the repository root on a GPU machine; the CUTLASS library must be built (ES_DUAL_CACHE_DIR).
set -o pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTORCH_NO_CUDA_MEMORY_CACHING=1
python3 benchmarks/sanitize_cases.py || exit 1   # compiles the Triton kernels once, outside the tools
status=0
for tool in memcheck racecheck initcheck synccheck; do
  echo "== compute-sanitizer --tool $tool"
  compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 python3 benchmarks/sanitize_cases.py 2>&1 | tail -n 12
  rc=${PIPESTATUS[0]}
  echo "== $tool exit code $rc"
  [ "$rc" -eq 0 ] || status=1
done
exit $status

#!/usr/bin/env bash
# compute-sanitizer's four tools over benchmarks/sanitize_cases.py (both backends, boundary routings).
# Run from the repository root on a GPU machine; the CUTLASS library must be built (ES_DUAL_CACHE_DIR).
# Each tool's full report goes to ${OUT:-/tmp}/sanitize_<tool>.log; the summary lines are printed.
set -o pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTORCH_NO_CUDA_MEMORY_CACHING=1
logs=${OUT:-/tmp}
python3 benchmarks/sanitize_cases.py || exit 1   # compiles the Triton kernels once, outside the tools
status=0
for tool in memcheck racecheck initcheck synccheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 50 python3 benchmarks/sanitize_cases.py \
    > "$logs/sanitize_$tool.log" 2>&1
  rc=$?
  echo "== $tool: exit code $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/sanitize_$tool.log" | head -n 1)"
  [ "$rc" -eq 0 ] || status=1
done
exit $status

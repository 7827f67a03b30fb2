#!/usr/bin/env bash
# One visit to the GPU machine: the card, then each step, logged under $OUT; a short summary last.
# Usage (from the repository root): bash benchmarks/gpu_visit.sh "label: command" ["label: command" ...]
# The CUTLASS library comes prebuilt in .cache/es_dual (built here with ES_DUAL_CACHE_DIR pointing there).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export ES_DUAL_CACHE_DIR=${ES_DUAL_CACHE_DIR:-$PWD/.cache/es_dual}
OUT=${OUT:-/tmp/es_dual_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$OUT/card.txt"
summary=()
for step in "$@"; do
  label=${step%%:*}; cmd=${step#*:}
  start=$SECONDS
  echo "==== $label:$cmd"
  bash -c "$cmd" 2>&1 | tee "$OUT/$label.log" | tail -n 25
  summary+=("$label rc=${PIPESTATUS[0]} $((SECONDS - start)) s: $(grep -E 'passed|failed|error' "$OUT/$label.log" | tail -n 1)")
done
echo "==== summary"
[ -f "$OUT/bench.log" ] && sed -n '/^workload /,$p' "$OUT/bench.log"
printf '%s\n' "${summary[@]}"

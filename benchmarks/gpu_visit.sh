#!/usr/bin/env bash
# One visit to the GPU machine: card, GPU tests, benchmark, optional sweeps; logs and CSV under $OUT.
# Usage (from the repository root): bash benchmarks/gpu_visit.sh "<pytest args>" "<bench args>" "<extra command>"
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export ES_DUAL_CACHE_DIR=${ES_DUAL_CACHE_DIR:-$PWD/.cache/es_dual}
OUT=${OUT:-/tmp/es_dual_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$OUT/card.txt"
summary=()
if [ -n "${1-}" ]; then
  start=$SECONDS
  python3 -m pytest $1 2>&1 | tee "$OUT/pytest.log" | tail -n 40
  summary+=("pytest rc=${PIPESTATUS[0]} $(tail -n 1 "$OUT/pytest.log") ($((SECONDS - start)) s)")
fi
if [ -n "${2-}" ]; then
  start=$SECONDS
  python3 -m es_dual.bench $2 --csv "$OUT/bench.csv" 2>&1 | tee "$OUT/bench.log" | tail -n 5
  summary+=("bench rc=${PIPESTATUS[0]} ($((SECONDS - start)) s)")
fi
if [ -n "${3-}" ]; then
  start=$SECONDS
  bash -c "$3" 2>&1 | tee "$OUT/extra.log" | tail -n 60
  summary+=("extra rc=${PIPESTATUS[0]} ($((SECONDS - start)) s)")
fi
echo "==== summary"
[ -f "$OUT/bench.log" ] && sed -n '/^workload /,$p' "$OUT/bench.log"
printf '%s\n' "${summary[@]}"

#!/usr/bin/env bash
# One visit to the GPU machine: the card, then each step, logged into $OUT/logs.tar; a short summary last.
# Usage (from the repository root): bash benchmarks/gpu_visit.sh "label: command" ["label: command" ...]
# The CUTLASS library comes prebuilt in .cache/es_dual (built here with ES_DUAL_CACHE_DIR pointing there).
# Peers come in the git-ignored .peers/ (cp -r ../shared/peers .peers). When .peers/deepgemm is there,
# DeepGEMM is built in the background from the start (about 90 s); a step labelled wait_dg waits for that
# build, then runs its command (may be empty) and every later step with DeepGEMM importable, e.g.
#   bash benchmarks/gpu_visit.sh "tests: python3 -m pytest -q" "wait_dg:" "bench: python3 -m es_dual.bench"
# The card, the DeepGEMM build log and each step's log (label.log) go into one file, $OUT/logs.tar, made
# again after every step (what comes back from the machine is at most 8 files; a step that runs out of
# time still leaves the earlier logs): tar -xf logs.tar. Commands write their own results into $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export ES_DUAL_CACHE_DIR=${ES_DUAL_CACHE_DIR:-$PWD/.cache/es_dual}
OUT=${OUT:-/tmp/es_dual_out}; mkdir -p "$OUT"
LOGS=/tmp/es_dual_logs; rm -rf "$LOGS"; mkdir -p "$LOGS"
save_logs() { tar -cf "$OUT/logs.tar" -C "$LOGS" .; }
dg_pid=
if [ -f .peers/deepgemm/build.sh ] && [ ! -d /tmp/dg/deep_gemm ]; then
  chmod -R u+w .peers  # copies of read-only files: the build writes into what it copies
  bash .peers/deepgemm/build.sh /tmp/dg > /tmp/dg_build.log 2>&1 &
  dg_pid=$!
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee "$LOGS/card.txt"
summary=()
for step in "$@"; do
  label=${step%%:*}; cmd=${step#*:}
  start=$SECONDS
  echo "==== $label:$cmd"
  if [ "$label" = wait_dg ]; then
    [ -n "$dg_pid" ] && { wait "$dg_pid"; echo "DeepGEMM build rc=$?"; }
    tail -n 3 /tmp/dg_build.log 2>/dev/null; cp /tmp/dg_build.log "$LOGS/" 2>/dev/null
    # How DeepGEMM imports there (../shared/DEVICE.md): its JIT cache in /tmp, the system libstdc++ first.
    export PYTHONPATH=/tmp/dg:$PYTHONPATH DG_JIT_CACHE_DIR=/tmp/dg_jit LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
  fi
  bash -c "$cmd" 2>&1 | tee "$LOGS/$label.log" | tail -n 25
  summary+=("$label rc=${PIPESTATUS[0]} $((SECONDS - start)) s: $(grep -E 'passed|failed|error' "$LOGS/$label.log" | tail -n 1)")
  save_logs
done
echo "==== summary"
[ -f "$LOGS/bench.log" ] && sed -n '/^es_dual against the best peer/,$p' "$LOGS/bench.log"
printf '%s\n' "${summary[@]}"

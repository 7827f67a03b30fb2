#!/usr/bin/env bash
# compute-sanitizer's four tools over benchmarks/sanitize_cases.py (both backends, boundary routings).
# Run from the repository root on a GPU machine; the CUTLASS library must be built (ES_DUAL_CACHE_DIR).
# memcheck and synccheck run every backend in one process; racecheck and initcheck run one backend per
# process, so that each report names its backend; the eight processes run at once. Then racecheck runs
# over benchmarks/racecheck_probe.cu, which shows what the tool reports for the shared-memory pipeline
# of CUTLASS's FP8 blockwise mainloop (docs/reliability.md classifies what it reports there).
# The exit status is the tools' verdict as reported, without exceptions.
# Every report goes into ${OUT:-/tmp}/sanitize_logs.tgz; a condensed report of each failing run
# (benchmarks/sanitizer_report.py) and the summary lines are printed.
set -o pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTORCH_NO_CUDA_MEMORY_CACHING=1
logs=${OUT:-/tmp}
python3 benchmarks/sanitize_cases.py || exit 1   # compiles the Triton kernels once, outside the tools
backends=$(python3 benchmarks/sanitize_cases.py --list)
status=0
runs=()  # "tool logname [backend]": memcheck and synccheck over every backend, the other two per backend
for tool in memcheck synccheck; do runs+=("$tool $tool"); done
for tool in racecheck initcheck; do
  for backend in $backends; do runs+=("$tool ${tool}_$backend $backend"); done
done
for run in "${runs[@]}"; do  # the runs are independent processes: all at once
  read -r tool name backend <<< "$run"
  # racecheck's default report pairs the two instructions of each hazard, with counts: complete and short
  compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 2000 --show-backtrace no \
    python3 benchmarks/sanitize_cases.py $backend > "$logs/sanitize_$name.log" 2>&1 &
done
wait
for run in "${runs[@]}"; do
  read -r tool name backend <<< "$run"
  log=$logs/sanitize_$name.log
  summary=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n 1)
  matched="all outputs matched the reference"
  grep -q 'all match the reference' "$log" || { matched="OUTPUTS DID NOT MATCH"; status=1; }
  echo "== $tool ${backend:-all backends}: $summary; $matched"
  if ! grep -qE 'SUMMARY: 0 (errors|hazards)' <<< "$summary"; then python3 benchmarks/sanitizer_report.py "$log"; status=1; fi
done
probe=$logs/racecheck_probe
nvcc -std=c++17 -O2 -lineinfo -arch=sm_90a -o "$probe" benchmarks/racecheck_probe.cu || exit 1
for release in every_reader one_after_bar one_unordered; do
  "$probe" "$release" || status=1   # the values are right without the tool too
  compute-sanitizer --tool racecheck --racecheck-report hazard --print-limit 20 "$probe" "$release" \
    > "$logs/racecheck_probe_$release.log" 2>&1
  echo "== racecheck probe $release: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$logs/racecheck_probe_$release.log" | tail -n 1)"
done
rm -f "$probe"
(cd "$logs" && tar czf sanitize_logs.tgz sanitize_*.log racecheck_probe_*.log && rm -f sanitize_*.log racecheck_probe_*.log)
exit $status

#!/usr/bin/env bash
# ncu's full set on one GEMM launch of each "MODE:WORKLOAD" (MODE as benchmarks/profile_workload.py takes it:
# a bucket-table mode or a provider such as deepgemm_contiguous), the second call's kernel, clocks not
# locked (what the card does under this load): every section's details as text, and the SASS with its
# per-instruction counters (warp stall samples) as CSV, both in $OUT/ncu_compare.tar.
# Usage: bash benchmarks/ncu_compare.sh native_mc:balanced_big deepgemm_contiguous:balanced_big ...
dir=/tmp/ncu_compare; rm -rf "$dir"; mkdir -p "$dir"
for spec in "$@"; do
  mode=${spec%%:*} workload=${spec#*:}
  name="${mode}_${workload}"
  echo "== $name"
  ncu --set full --import-source no --clock-control none -k regex:'gemm|fp8' --launch-skip 1 --launch-count 1 \
      -f -o "$dir/$name" python3 benchmarks/profile_workload.py "$mode" "$workload" --peers .peers \
      > "$dir/$name.run.log" 2>&1 || tail -n 5 "$dir/$name.run.log"
  ncu -i "$dir/$name.ncu-rep" --page details --print-summary none > "$dir/$name.details.txt" 2>&1
  ncu -i "$dir/$name.ncu-rep" --page source --csv --print-source sass > "$dir/$name.sass.csv" 2>&1
  grep -E "^  [a-zA-Z_].*\(|Duration|SM Frequency|Compute \(SM\) Throughput|Issue Slots Busy|Registers Per|Achieved Occupancy" \
      "$dir/$name.details.txt" | head -n 12
  rm -f "$dir/$name.ncu-rep"
done
tar -cf "${OUT:-/tmp}/ncu_compare.tar" -C "$dir" .

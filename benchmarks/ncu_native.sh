#!/usr/bin/env bash
# Per-kernel counters of one call of each named public workload in one mode (default native), one line
# per kernel: duration, DRAM throughput (% of peak), DRAM bytes, L2 hit rate, SM throughput, grid size.
# Usage: bash benchmarks/ncu_native.sh MODE WORKLOAD [WORKLOAD ...]
mode=$1; shift
metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size
for w in "$@"; do
  echo "== $mode $w"
  ncu --clock-control none -k regex:'grouped_gemm|prepare' --launch-count 4 --metrics $metrics --csv \
      python benchmarks/profile_workload.py "$mode" "$w" 2>/dev/null |
    python -c "
import csv, sys
rows = [r for r in csv.DictReader(l for l in sys.stdin if l.startswith('\"'))]
by = {}
for r in rows:
    by.setdefault((r['ID'], r['Kernel Name'][:60]), {})[r['Metric Name']] = r['Metric Value'] + ' ' + r['Metric Unit']
for (i, k), m in by.items():
    print(i, k, ' | '.join(f'{n.split(\"__\")[1][:22]}={v}' for n, v in sorted(m.items())))
"
done

"""Time Triton tile configurations on the public workloads (GPU); prints the best per workload.

python benchmarks/triton_sweep.py [--budget-s 120] [--csv file]
"""
import argparse
import csv
import time

import torch

from es_dual.bench.timing import time_us
from es_dual.bench.workloads import PUBLIC_WORKLOADS
from es_dual.problem import check_inputs
from es_dual.triton_ref.launch import TileConfig, grouped_gemm_triton

# (block_m, block_n, warps, stages, programs per SM; 0 = one program per tile)
CANDIDATES = [
    TileConfig(float("inf"), bm, bn, 128, warps, stages, pps)
    for bm, bn, warps, stages, pps in (
        (16, 128, 4, 4, 0), (16, 128, 4, 4, 2), (32, 128, 4, 4, 2), (64, 128, 4, 4, 0), (64, 128, 4, 4, 2),
        (64, 64, 4, 4, 2), (64, 128, 4, 3, 3), (128, 128, 8, 3, 0), (128, 256, 8, 3, 0), (128, 256, 8, 3, 1),
    )
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=120)
    parser.add_argument("--csv")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s
    rows = []
    print("columns: " + " | ".join(f"{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages} p{c.programs_per_sm}" for c in CANDIDATES))
    for w in PUBLIC_WORKLOADS:
        inputs = w.make_inputs("cuda")
        problem = check_inputs(**inputs)
        out = torch.empty(problem.total_m, problem.n, dtype=torch.bfloat16, device="cuda")
        results = []
        for config in CANDIDATES:
            if time.monotonic() > deadline:
                break
            fn = lambda: grouped_gemm_triton(problem, *inputs.values(), out, config=config)
            try:
                us = time_us(fn, problem.device)
            except Exception as exc:  # out of shared memory or registers for this shape
                print(f"{w.name} {config}: {type(exc).__name__}")
                continue
            results.append((us, config))
            rows.append(dict(workload=w.name, bm=config.block_m, bn=config.block_n, warps=config.num_warps,
                             stages=config.num_stages, programs_per_sm=config.programs_per_sm, us=us))
        if results:
            chosen_us = time_us(lambda: grouped_gemm_triton(problem, *inputs.values(), out), problem.device)
            line = " ".join(f"{us:7.1f}" for us, _ in results)
            print(f"{w.name:<20} table {chosen_us:7.1f} | {line}", flush=True)
        del inputs
    if args.csv and rows:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()

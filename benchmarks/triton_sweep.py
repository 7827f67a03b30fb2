"""Time Triton tile configurations on the public workloads (GPU); prints the best per workload.

python benchmarks/triton_sweep.py [--budget-s 120] [--csv file]
"""
import argparse
import csv
import itertools
import time

import torch

from es_dual.bench.timing import time_us
from es_dual.bench.workloads import PUBLIC_WORKLOADS
from es_dual.problem import check_inputs
from es_dual.triton_ref.launch import TileConfig, choose_config, grouped_gemm_triton

CANDIDATES = [
    TileConfig(float("inf"), bm, bn, 128, warps, stages)
    for bm, bn, (warps, stages) in itertools.product((16, 32, 64, 128), (64, 128), ((4, 3), (4, 4), (8, 3)))
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=120)
    parser.add_argument("--csv")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s
    rows = []
    for w in PUBLIC_WORKLOADS:
        inputs = w.make_inputs("cuda")
        problem = check_inputs(**inputs)
        out = torch.empty(problem.total_m, problem.n, dtype=torch.bfloat16, device="cuda")
        chosen = choose_config(problem)
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
                             stages=config.num_stages, us=us, chosen=config == chosen))
        if results:
            best_us, best = min(results, key=lambda r: r[0])
            chosen_us = next((us for us, c in results if c == chosen), float("nan"))
            print(f"{w.name:<20} best {best_us:8.1f} us bm={best.block_m} bn={best.block_n} w={best.num_warps} s={best.num_stages}"
                  f" | table's choice {chosen_us:8.1f} us", flush=True)
        del inputs
    if args.csv and rows:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()

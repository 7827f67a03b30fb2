"""Time Triton tile configurations on the public workloads (GPU); prints the best per workload.

python benchmarks/triton_sweep.py [--budget-s 120] [--csv file] [--workloads a,b]
                                  [--configs "bm,bn,w,s,p,g[,hs[,mp]];..."]
python benchmarks/triton_sweep.py --buckets [--csv file]   # the mean-based table against expert specialization

With --buckets, every workload (public and extra) runs four ways: the default (one tile from the mean
tokens per expert), TRITON_BUCKETS (one launch per bucket of experts), TRITON_BUCKETS with persistent
launches, and TRITON_TWO_KINDS (both kinds in one persistent launch); CUDA-event timing with the L2 flushed
(time_us), each output checked against the float64 reference with es_dual.accuracy.tolerance ("!": outside it).
Without it, every candidate is timed the same way and checked the same way ("!" after its time: wrong).
A warp-specialized candidate (hs > 0: hopper.large_tile_kernel with hs stages and mp math partitions,
default 1) is skipped, with the reason, where it cannot run (launch.hopper_tile_reasons): the Triton
kernel would run in its place.
"""
import argparse
import csv
import sys
import time

import torch

from es_dual.accuracy import relative_errors, tolerance
from es_dual.bench.__main__ import reference_f64
from es_dual.bench.providers import PROVIDERS
from es_dual.bench.timing import time_us
from es_dual.bench.workloads import PUBLIC_WORKLOADS, WORKLOAD_SETS
from es_dual.problem import check_inputs
from es_dual.triton_ref.launch import (
    TRITON_BUCKETS, TRITON_TWO_KINDS, TileConfig, TritonBucket, TwoKinds, grouped_gemm_triton, hopper_tile_reasons,
    plan_two_kinds,
)

# (block_m, block_n, warps, stages, programs per SM (0 = one program per tile), row tiles per group of the
# launch order (0 = row tiles fastest)[, hopper.large_tile_kernel's stages (0: kernel.py's tile)[, its math
# partitions]])
CANDIDATES = [
    TileConfig(float("inf"), *fields[:2], 128, *fields[2:])
    for fields in (
        (16, 128, 4, 4, 0, 0, 0), (16, 128, 4, 4, 2, 0, 0), (32, 128, 4, 4, 2, 0, 0), (64, 128, 4, 4, 0, 0, 0),
        (64, 128, 4, 4, 0, 8, 0), (64, 128, 4, 4, 2, 0, 0), (64, 64, 4, 4, 2, 0, 0), (64, 128, 4, 3, 3, 0, 0),
        (128, 128, 8, 3, 0, 0, 0), (128, 128, 8, 3, 0, 8, 0), (128, 128, 8, 3, 0, 16, 0), (128, 256, 8, 3, 0, 0, 0),
        (128, 256, 8, 3, 0, 8, 0), (128, 256, 8, 3, 1, 0, 0), (128, 128, 8, 3, 0, 8, 3), (128, 128, 8, 3, 0, 8, 4),
        (128, 128, 8, 3, 0, 8, 5), (128, 128, 8, 3, 0, 0, 4), (128, 128, 8, 3, 0, 8, 4, 2),
        (128, 128, 8, 3, 0, 8, 3, 2),
    )
]


PERSISTENT_BUCKETS = tuple(TritonBucket(b.max_rows, b.config.persistent(2)) for b in TRITON_BUCKETS)
BUCKET_VARIANTS = {"mean_table": None, "buckets": TRITON_BUCKETS, "buckets_persistent": PERSISTENT_BUCKETS,
                   "two_kinds": TRITON_TWO_KINDS}


def _variant_call(problem, inputs, out, table):
    """One call of a variant: the mean-based table (None), a bucket table, or the two-kind launch."""
    if isinstance(table, TwoKinds):
        planned, tensors = plan_two_kinds(problem, table), (*inputs.values(), out)
        return lambda: planned(tuple(t.data_ptr() for t in tensors), lambda: tensors)
    return lambda: grouped_gemm_triton(problem, *inputs.values(), out, buckets=table)


def compare_buckets(csv_path):
    rows = []
    print("workload".ljust(28) + "".join(name.rjust(20) for name in BUCKET_VARIANTS) + "   (µs, time_us: events, L2 flushed; !: wrong)")
    for w in WORKLOAD_SETS["all"]:
        inputs = w.make_inputs("cuda")
        problem = check_inputs(**inputs)
        outs = {name: torch.empty(problem.total_m, problem.n, dtype=torch.bfloat16, device="cuda") for name in BUCKET_VARIANTS}
        reference = reference_f64(**inputs)
        max_tol, rms_tol = tolerance(torch.bfloat16)
        line = w.name.ljust(28)
        for name, table in BUCKET_VARIANTS.items():
            out = outs[name]
            if isinstance(table, TwoKinds) and problem.num_experts > 1024:
                continue
            us = time_us(_variant_call(problem, inputs, out, table), problem.device)
            max_rel, rms_rel = relative_errors(out, reference)
            ok = max_rel <= max_tol and rms_rel <= rms_tol
            rows.append(dict(workload=w.name, variant=name, us=us, max_rel_err=max_rel, rms_rel_err=rms_rel, correct=ok))
            line += f"{us:19.1f}{'' if ok else '!'}"
        print(line, flush=True)
        del inputs, outs
    if csv_path and rows:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=120)
    parser.add_argument("--csv")
    parser.add_argument("--buckets", action="store_true", help="the mean-based table against TRITON_BUCKETS")
    parser.add_argument("--workloads", help="comma-separated names (default: the public workloads)")
    parser.add_argument("--configs", help="candidates instead of CANDIDATES: 'block_m,block_n,warps,stages,"
                                          "programs_per_sm,row_group[,hopper_stages[,hopper_math_partitions]];...'")
    parser.add_argument("--peers", help="a folder with peer_triton_moe: vLLM's kernel timed alongside (vllm column)")
    args = parser.parse_args()
    if args.buckets:
        return compare_buckets(args.csv)
    candidates = CANDIDATES if not args.configs else [
        TileConfig(float("inf"), *fields[:2], 128, *fields[2:])
        for fields in (list(map(int, c.split(","))) for c in args.configs.split(";"))]
    by_name = {w.name: w for w in WORKLOAD_SETS["all"]}
    workloads = [by_name[name] for name in args.workloads.split(",")] if args.workloads else PUBLIC_WORKLOADS
    if args.peers:
        sys.path.insert(0, args.peers)
    deadline = time.monotonic() + args.budget_s
    rows = []
    def label(c):
        return (f"{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages} p{c.programs_per_sm} g{c.row_group}"
                + (f" hs{c.hopper_stages} mp{c.hopper_math_partitions}" if c.hopper_stages else ""))

    print("columns: " + " | ".join(map(label, candidates))
          + "   (µs, time_us: events, L2 flushed; !: outside es_dual.accuracy.tolerance of the float64 reference)")
    max_tol, rms_tol = tolerance(torch.bfloat16)
    for w in workloads:
        inputs = w.make_inputs("cuda")
        problem = check_inputs(**inputs)
        reference = reference_f64(**inputs)
        out = torch.empty(problem.total_m, problem.n, dtype=torch.bfloat16, device="cuda")
        results = []
        for config in candidates:
            if time.monotonic() > deadline:
                break
            reasons = hopper_tile_reasons(problem) if config.hopper_stages else []
            if reasons:
                print(f"{w.name} {config}: skipped, {'; '.join(reasons)}")
                continue
            fn = lambda: grouped_gemm_triton(problem, *inputs.values(), out, config=config)
            try:
                us = time_us(fn, problem.device)
            except Exception as exc:  # out of shared memory or registers for this shape
                print(f"{w.name} {config}: {type(exc).__name__}")
                continue
            max_rel, rms_rel = relative_errors(out, reference)
            ok = max_rel <= max_tol and rms_rel <= rms_tol
            results.append((us, ok))
            print(f"  {w.name} {label(config)}: {us:.1f}{'' if ok else ' !'}", flush=True)  # a later hang keeps it
            rows.append(dict(workload=w.name, bm=config.block_m, bn=config.block_n, warps=config.num_warps,
                             stages=config.num_stages, programs_per_sm=config.programs_per_sm,
                             row_group=config.row_group, hopper_stages=config.hopper_stages,
                             hopper_math_partitions=config.hopper_math_partitions, us=us,
                             max_rel_err=max_rel, rms_rel_err=rms_rel, correct=ok))
        if results:
            chosen_us = time_us(lambda: grouped_gemm_triton(problem, *inputs.values(), out), problem.device)
            line = " ".join(f"{us:7.1f}{'' if ok else '!'}" for us, ok in results)
            vllm = ""
            if args.peers:  # vLLM's kernel on the same inputs, in its users' layout (its sorted ids made here)
                vllm = f" | vllm {time_us(PROVIDERS['vllm_triton'].prepare(problem, inputs).run, problem.device):7.1f}"
            print(f"{w.name:<20} table {chosen_us:7.1f} | {line}{vllm}", flush=True)
        del inputs, reference
        if args.csv and rows:  # after every workload: a step cut short by its timeout keeps what it measured
            with open(args.csv, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)


if __name__ == "__main__":
    main()

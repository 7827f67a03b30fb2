"""A/B of two builds of the CUTLASS library that share the C API: the public workloads timed through the
public API with the build of these sources, or with another build in the cache (--key: the source key of
an earlier state of csrc/, the lib-<key> folder name). Run it once per build, alternating, in one visit.
python benchmarks/library_ab.py [--key KEY] [--repeat 3]
"""
import argparse

import torch

import es_dual
from es_dual.bench.timing import time_us
from es_dual.bench.workloads import PUBLIC_WORKLOADS
from es_dual.cutlass import build


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--key", help="source key of the build to load instead of these sources' build")
    parser.add_argument("--repeat", type=int, default=3, help="medians per workload (their minimum is printed)")
    args = parser.parse_args()
    if args.key:
        build.source_key = lambda tuning=None: args.key  # every path to the library goes through source_key()
    device = torch.device("cuda", 0)
    for workload in PUBLIC_WORKLOADS:
        inputs = workload.make_inputs(device)
        out = torch.empty(workload.total_m, workload.n, dtype=torch.bfloat16, device=device)
        call = lambda: es_dual.grouped_gemm_fp8(**inputs, out=out, backend="cutlass")  # noqa: E731
        us = min(time_us(call, device) for _ in range(args.repeat))
        print(f"{args.key or build.source_key()} {workload.name:18s} {us:8.1f} us", flush=True)
        del inputs, out


if __name__ == "__main__":
    main()

"""A/B of bucket-table modes of the CUTLASS library (e.g. the CUTLASS kernels' "es" tables against the
native kernels' "native" table) on the public workloads, in one process on one card.

Each (workload, mode) is checked against the reference, then timed in kernel mode: the call captured in
a CUDA graph and replayed, the L2 flushed before each replay (triton's do_bench), 100 ms of warm-up right
before, median. Modes are timed in two rounds, the second in reverse order; the better round is printed.
python benchmarks/mode_ab.py [--modes es,native] [--workloads a,b] [--extra] [--shapes N,K,E,T;...] [--eager]
(--eager: time plain calls, L2 flushed before each, instead of graph replays)
("es" means the production CUTLASS table for the workload's k: es, or es_small_k for k <= 256; MODE@N
enqueues the mode's bucket kernels with overlap N of buckets.OVERLAPS, e.g. es@2 with PDL instead of streams.)
"""
import argparse
import sys

import torch
import triton.testing

from es_dual.accuracy import relative_errors, tolerance
from es_dual.bench.timing import capture
from es_dual.bench.workloads import DISTRIBUTIONS, EXTRA_WORKLOADS, PUBLIC_WORKLOADS, Workload
from es_dual.cutlass.launch import grouped_gemm_cutlass
from es_dual.reference import run_reference


def kernel_us(fn) -> float:
    return 1e3 * triton.testing.do_bench(fn, warmup=100, rep=300, return_mode="median")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="es,native")
    parser.add_argument("--workloads", help="comma-separated names (default: the public eight)")
    parser.add_argument("--extra", action="store_true", help="also the extra workloads (es_dual.bench --set extra)")
    parser.add_argument("--shapes", help="also custom shapes 'n,k,experts,tokens;...': uniform routing of "
                        "experts x tokens tokens (the MoE layer's GEMMs: n = 2I, k = H and n = H, k = I)")
    parser.add_argument("--eager", action="store_true", help="time plain calls instead of CUDA-graph replays")
    args = parser.parse_args()
    modes = args.modes.split(",")
    pool = PUBLIC_WORKLOADS + (EXTRA_WORKLOADS if args.extra else ())
    workloads = [w for w in pool if not args.workloads or w.name in args.workloads.split(",")]
    if args.shapes:
        workloads = [w for w in workloads if args.workloads]  # named workloads stay only when asked for
        for shape in args.shapes.split(";"):
            n, k, experts, tokens = map(int, shape.split(","))
            counts = tuple(DISTRIBUTIONS["uniform"](experts, tokens))
            workloads.append(Workload(f"n{n}_k{k}_e{experts}_u{tokens}", n, k, counts))
    device = torch.device("cuda", 0)
    max_tol, rms_tol = tolerance(torch.bfloat16, both_rounded=True)
    print(f"{'workload':<20} " + " ".join(f"{m:>12}" for m in modes) + "   (us, " + ("eager" if args.eager else "kernel mode") + ", better of 2 rounds)")
    for w in workloads:
        inputs = w.make_inputs(device)
        ref = torch.empty(w.total_m, w.n, dtype=torch.bfloat16, device=device)
        run_reference(**inputs, out=ref)
        graphs, errors, calls = {}, {}, []
        for mode in modes:
            out = torch.full((w.total_m, w.n), float("nan"), dtype=torch.bfloat16, device=device)
            table, _, overlap = mode.partition("@")
            call = lambda table=table, overlap=overlap, out=out: grouped_gemm_cutlass(  # noqa: E731
                **inputs, out=out, mode=None if table == "es" else table, overlap=int(overlap) if overlap else None)
            call()
            max_rel, rms_rel = relative_errors(out, ref)
            errors[mode] = "" if max_rel <= max_tol and rms_rel <= rms_tol else f"WRONG({max_rel:.2g},{rms_rel:.2g})"
            # The graph writes into `out`, which only the lambda holds: keep the lambda with the graph
            # (torch.cuda.graph empties the allocator's cache when the next capture begins, so a tensor
            # freed meanwhile is unmapped and the replay faults).
            graphs[mode] = call if args.eager else capture(call).replay
            calls.append(call)
        times = {m: [] for m in modes}
        for order in (modes, modes[::-1]):
            for m in order:
                print(f"  timing {w.name} {m}", file=sys.stderr, flush=True)
                times[m].append(kernel_us(graphs[m]))
        # a wrong result keeps its time (an experiment may skip work on purpose), marked with "!"
        cells = [f"{min(times[m]):.1f}" + ("!" if errors[m] else "") for m in modes]
        print(f"{w.name:<20} " + " ".join(f"{c:>12}" for c in cells), flush=True)
        for m in modes:
            if errors[m]:
                print(f"  ! {m}: {errors[m]}", flush=True)
        del inputs, ref, graphs, calls


if __name__ == "__main__":
    main()

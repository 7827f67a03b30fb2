"""Run one workload through one mode of the CUTLASS library, or through one benchmark provider (a peer
such as deepgemm_contiguous), a few times, for ncu:
ncu --clock-control none -k regex:grouped_gemm --metrics ... python benchmarks/profile_workload.py MODE WORKLOAD
MODE: a bucket-table mode ("es": the production CUTLASS table for the workload's k), or a name in
es_dual.bench.providers.PROVIDERS (then --peers DIR puts the peers on sys.path, as the benchmark does)."""
import argparse

import torch

from es_dual.problem import check_inputs
from es_dual.bench.providers import PROVIDERS, add_peer_paths
from es_dual.bench.workloads import EXTRA_WORKLOADS, PUBLIC_WORKLOADS
from es_dual.cutlass.launch import grouped_gemm_cutlass

parser = argparse.ArgumentParser()
parser.add_argument("mode")
parser.add_argument("workload")
parser.add_argument("--peers")
parser.add_argument("--calls", type=int, default=2)
args = parser.parse_args()
w = next(w for w in PUBLIC_WORKLOADS + EXTRA_WORKLOADS if w.name == args.workload)
inputs = w.make_inputs(torch.device("cuda", 0))
if args.mode in PROVIDERS:
    add_peer_paths(args.peers)
    run = PROVIDERS[args.mode].prepare(check_inputs(**inputs), inputs).run
else:
    out = torch.empty(w.total_m, w.n, dtype=torch.bfloat16, device="cuda")
    run = lambda: grouped_gemm_cutlass(**inputs, out=out, mode=None if args.mode == "es" else args.mode)  # noqa: E731
for _ in range(args.calls):
    run()
torch.cuda.synchronize()

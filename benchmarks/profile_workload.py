"""Run one public workload through one mode of the CUTLASS library a few times, for ncu:
ncu --clock-control none -k regex:grouped_gemm --metrics ... python benchmarks/profile_workload.py MODE WORKLOAD
("es": the production CUTLASS table for the workload's k)."""
import sys

import torch

from es_dual.bench.workloads import EXTRA_WORKLOADS, PUBLIC_WORKLOADS
from es_dual.cutlass.launch import grouped_gemm_cutlass

mode, name = sys.argv[1:3]
w = next(w for w in PUBLIC_WORKLOADS + EXTRA_WORKLOADS if w.name == name)
inputs = w.make_inputs(torch.device("cuda", 0))
out = torch.empty(w.total_m, w.n, dtype=torch.bfloat16, device="cuda")
for _ in range(2):
    grouped_gemm_cutlass(**inputs, out=out, mode=None if mode == "es" else mode)
torch.cuda.synchronize()

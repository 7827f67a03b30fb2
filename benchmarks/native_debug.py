"""One routing through one mode, synchronized, with the status printed: for finding which kernel of a
mode faults (run each case in its own process, CUDA_LAUNCH_BLOCKING=1).
python benchmarks/native_debug.py MODE N K COUNT [COUNT ...]"""
import sys

import torch

sys.path.insert(0, "tests")
from support import assert_matches, make_inputs, reference64  # noqa: E402

from es_dual.cutlass.launch import grouped_gemm_cutlass  # noqa: E402

mode, n, k, *counts = sys.argv[1:]
counts = [int(c) for c in counts]
inputs = make_inputs(counts, int(n), int(k), seed=1, device="cuda")
out = torch.full((sum(counts), int(n)), float("nan"), dtype=torch.bfloat16, device="cuda")
grouped_gemm_cutlass(**inputs, out=out, mode=mode, overlap=0)
torch.cuda.synchronize()
assert_matches(out, reference64(inputs))
print(f"OK {mode} n={n} k={k} counts={counts}")

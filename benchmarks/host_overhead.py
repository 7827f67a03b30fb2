"""CPU time of one eager call per backend on a small problem (GPU work is far shorter than the host's).

python benchmarks/host_overhead.py [--calls 2000]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import es_dual  # noqa: E402
from es_dual.dispatch import available_backends  # noqa: E402
from es_dual.problem import check_inputs  # noqa: E402
from support import make_inputs  # noqa: E402


def per_call_us(fn, calls: int) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return 1e6 * elapsed / calls


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    inputs = make_inputs([4, 0, 3, 1, 2, 0, 5, 1], 256, 256, seed=0, device="cuda")
    out = torch.empty(16, 256, dtype=torch.bfloat16, device="cuda")
    rows = [("check_inputs only", per_call_us(lambda: check_inputs(**inputs, out=out), args.calls))]
    for backend in available_backends("cuda"):
        if backend == "reference":
            continue
        rows.append((f"grouped_gemm_fp8(backend={backend!r})",
                     per_call_us(lambda: es_dual.grouped_gemm_fp8(**inputs, out=out, backend=backend), args.calls)))
        op = torch.ops.es_dual.grouped_gemm_fp8
        rows.append((f"torch.ops.es_dual.grouped_gemm_fp8(..., {backend!r})",
                     per_call_us(lambda: op(*inputs.values(), out, backend), args.calls)))
    for name, us in rows:
        print(f"host overhead  {name:<55} {us:7.1f} us/call")


if __name__ == "__main__":
    main()

"""CPU time of one eager call per backend on a small problem, and where the CUTLASS path spends it.

The GPU work of the problem is far shorter than the host's, so the wall time of many back-to-back calls
(synchronized outside the loop) is the host time per call.
python benchmarks/host_overhead.py [--calls 2000]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import es_dual  # noqa: E402
from es_dual.cutlass import buckets, launch, loader  # noqa: E402
from es_dual.dispatch import available_backends, select_backend  # noqa: E402
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
    inputs = make_inputs([4, 0, 3, 1, 2, 0, 5, 1], 256, 512, seed=0, device="cuda")
    out = torch.empty(16, 256, dtype=torch.bfloat16, device="cuda")
    problem = check_inputs(**inputs, out=out)
    rows = [
        ("check_inputs", lambda: check_inputs(**inputs, out=out)),
        ("select_backend", lambda: select_backend(problem, "cutlass")),
        ("torch.empty (workspace)", lambda: torch.empty(4096, dtype=torch.uint8, device="cuda")),
    ]
    if "cutlass" in available_backends("cuda"):
        lib = loader.load_library()
        ws = torch.empty(launch._workspace_bytes(256, 512, 8, 0, launch.mode_code("es"), launch._sm_count(0)),
                         dtype=torch.uint8, device="cuda")
        ptrs = [t.data_ptr() for t in inputs.values()]
        stream = torch.cuda.current_stream().cuda_stream
        for mode in ("es", "single"):
            for overlap in buckets.OVERLAPS:
                code = launch.mode_code(mode)
                call = (lambda code=code, overlap=overlap: lib.es_dual_grouped_gemm(
                    ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4], 0, out.data_ptr(), 16, 256, 512, 8, 0, code,
                    overlap, 0, launch._sm_count(0), ws.data_ptr(), ws.numel(), stream))
                rows.append((f"C library alone, mode {mode}, overlap {buckets.OVERLAPS[overlap]}", call))
        rows.append(("grouped_gemm_cutlass (Python launcher + C)",
                     lambda: launch.grouped_gemm_cutlass(*inputs.values(), out)))
    for backend in available_backends("cuda"):
        if backend != "reference":
            rows.append((f"es_dual.grouped_gemm_fp8(backend={backend!r})",
                         lambda backend=backend: es_dual.grouped_gemm_fp8(**inputs, out=out, backend=backend)))
    for name, fn in rows:
        print(f"host overhead  {name:<52} {per_call_us(fn, args.calls):7.1f} us/call", flush=True)


if __name__ == "__main__":
    main()

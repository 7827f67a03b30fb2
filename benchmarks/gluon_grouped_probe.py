"""Does a warp-specialized Gluon kernel reach the FP8 rate where es_dual's Triton kernel stops (issue 15,
balanced_big at 60 %)? A plain grouped GEMM over E experts of m rows each (m a multiple of 128), blockwise
scales as es_dual's (a_scale (E*m, k/128) per row and K block, b_scale (E*n/128, k/128)), built as
DeepGEMM is: per 128 x 128 output tile one CTA with

  - a producer partition (PRODUCER_WARPS warps, few registers) issuing the TMA loads of each K block's
    a and b tiles into STAGES shared-memory stages, each stage's `ready` barrier counting the bytes;
  - the math partition (8 warps, two warp groups of 64 rows, given the producer's registers): block kb's
    WGMMAs issued, then block kb - 1's waited for with one group still in flight
    (`warpgroup_mma_wait(num_outstanding=1)`), its stage handed back (`empty`), its product promoted into
    the float32 sum with its two scales.

The tile is gluon_wgmma_probe.warp_specialized_tile, its K loop compiled per k (straight-line code): with
a run-time loop ptxas serializes the WGMMAs (`benchmarks/gluon_wgmma_probe.py`, docs/perf-notes.md). Timed against the same problem in the layout of
`benchmarks/triton_promotion_probe.py`'s `each` variant (the Triton kernel's K loop), CUDA events, the L2
flushed; the output checked against float32 math on expert 0's first 128 rows and against `each`.

python benchmarks/gluon_grouped_probe.py [--shape E,m,n,k] [--stages 4] [--producer 4,40] [--group 8] [--sass]
(--sass: compile for sm_90a and report registers, WGMMA waits and instructions per K block, no GPU needed.)
Needs Triton 3.6's Gluon (the GPU machine's; elsewhere a venv with `pip install triton==3.6.0`).
"""
import argparse
import collections
import re

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from gluon_wgmma_probe import warp_specialized_tile

BLOCK = 128  # the tile's rows, columns and K block: one scale block each way


@gluon.jit
def grouped_kernel(a_desc, b_desc, a_scale_ptr, b_scale_ptr, out_ptr, m, n, K_BLOCKS: gl.constexpr,
                   STAGES: gl.constexpr, GROUP: gl.constexpr, PRODUCER_WARPS: gl.constexpr,
                   PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """Program (tile, expert): row tiles in groups of GROUP (the Triton kernel's launch order), each tile
    gluon_wgmma_probe.warp_specialized_tile with its K compiled in."""
    pid = gl.program_id(0)
    e = gl.program_id(1)
    m_tiles = m // 128
    n_tiles = n // 128
    group = pid // (GROUP * n_tiles)
    size = gl.minimum(m_tiles - group * GROUP, GROUP)
    local = pid - group * GROUP * n_tiles
    m_tile = group * GROUP + local % size
    n_tile = local // size
    b_scale_row = b_scale_ptr + (e * n_tiles + n_tile).to(gl.int64) * K_BLOCKS
    warp_specialized_tile(a_desc, b_desc, a_scale_ptr, b_scale_row, out_ptr, n, e * m + m_tile * 128,
                          e * n + n_tile * 128, n_tile * 128, K_BLOCKS, K_BLOCKS, False, STAGES, PRODUCER_WARPS,
                          PRODUCER_REGS, num_warps)


def sass_report(k_blocks: int, stages: int, group: int, producer_warps: int, producer_regs: int) -> None:
    """Without a GPU: grouped_kernel compiled for sm_90a (gluon_wgmma_probe.compile_report), and the math
    partition's instructions per K block (between its first and last WGMMA, the K loop being unrolled)."""
    from gluon_wgmma_probe import compile_report

    layout = "NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)"
    signature = {"a_desc": f"tensordesc<fp8e4nv[128, 128],{layout}>", "b_desc": f"tensordesc<fp8e4nv[128, 128],{layout}>",
                 "a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32", "out_ptr": "*bf16", "m": "i32", "n": "i32"}
    print(f"grouped_kernel, {k_blocks} K blocks, {stages} stages, producer {producer_warps} warps {producer_regs} registers")
    sass = compile_report(grouped_kernel, signature, dict(K_BLOCKS=k_blocks, STAGES=stages, GROUP=group,
                                                          PRODUCER_WARPS=producer_warps,
                                                          PRODUCER_REGS=producer_regs, num_warps=8), 8)
    ops = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M)
    first = next(i for i, op in enumerate(ops) if op.startswith("QGMMA"))
    last = max(i for i, op in enumerate(ops) if op.startswith("QGMMA"))
    loop = collections.Counter(op.split(".")[0] for op in ops[first:last + 1])
    per_block = (last + 1 - first) / max(k_blocks - 1, 1)
    print(f"  math partition: {per_block:.1f} instructions per K block: "
          + ", ".join(f"{op} {n / max(k_blocks - 1, 1):.1f}" for op, n in loop.most_common(8)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="8,4096,4096,7168", help="E,m,n,k (balanced_big)")
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--producer", default="4,40", help="the producer partition's warps,registers")
    parser.add_argument("--group", type=int, default=8, help="row tiles per group of the launch order")
    parser.add_argument("--sass", action="store_true", help="compile for sm_90a and report, no GPU needed")
    args = parser.parse_args()
    E, m, n, k = map(int, args.shape.split(","))
    producer_warps, producer_regs = map(int, args.producer.split(","))
    if args.sass:
        return sass_report(k // BLOCK, args.stages, args.group, producer_warps, producer_regs)

    import torch
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from es_dual.bench.timing import time_us
    from triton_promotion_probe import probe_kernel

    dev = torch.device("cuda")
    torch.manual_seed(0)
    a = torch.randn(E * m, k, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(E * n, k, device=dev).to(torch.float8_e4m3fn)
    a_s = torch.rand(E * m, k // BLOCK, device=dev) + 0.5
    b_s = torch.rand(E * n // BLOCK, k // BLOCK, device=dev) + 0.5
    flops = 2 * E * m * n * k
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)
    a_desc = TensorDescriptor.from_tensor(a, [BLOCK, BLOCK], layout)
    b_desc = TensorDescriptor.from_tensor(b, [BLOCK, BLOCK], layout)
    grid = (m // BLOCK * (n // BLOCK), E)
    outs = {}

    def gluon_call(out):
        grouped_kernel[grid](a_desc, b_desc, a_s, b_s, out, m, n, k // BLOCK, args.stages, args.group,
                             producer_warps, producer_regs, num_warps=8)

    def triton_call(out):
        probe_kernel[grid](a, b, a_s, b_s, out, m, n, k, 0, BLOCK, BLOCK, args.group, num_warps=8, num_stages=3)

    a0 = a[:BLOCK].float() * a_s[:BLOCK].repeat_interleave(BLOCK, dim=1)
    b0 = b[:n].float() * b_s[: n // BLOCK].repeat_interleave(BLOCK, dim=0).repeat_interleave(BLOCK, dim=1)
    exact = a0 @ b0.T
    for name, call in (("triton each", triton_call), ("gluon ws", gluon_call), ("triton each again", triton_call)):
        out = torch.empty(E * m, n, dtype=torch.bfloat16, device=dev)
        call(out)
        outs.setdefault(name.split()[0], out)
        err = ((out[:BLOCK].float() - exact).norm() / exact.norm()).item()
        us = time_us(lambda: call(out), dev)
        print(f"{name:<18} {us:9.1f} us  {flops / us / 1e6:7.1f} TFLOPS  rel err vs float32 math {err:.1e}", flush=True)
    diff = ((outs["gluon"].float() - outs["triton"].float()).norm() / outs["triton"].float().norm()).item()
    print(f"gluon against triton: rel diff {diff:.1e}")


if __name__ == "__main__":
    main()

"""Can a Triton FP8 blockwise GEMM keep the tensor cores busy across the per-K-block scale multiply? (GPU;
issue 15, balanced_big at 60 % of the FP8 rate.)

es_dual's Triton kernel computes each K block's product into fresh registers, waits for it, then adds it
into the float32 accumulator times its two scales. Triton waits for every WGMMA right after issuing it when
its result feeds anything but another dot's accumulator, and the 8 warps of a 128 x 128 tile meet at a
barrier every K block, so the FMAs, the address arithmetic and the next block's issue all run while the
tensor cores idle (SASS: WARPGROUP.DEPBAR.LE gsb0, 0x0 after each QGMMA group). Variants, each a plain
grouped GEMM over E experts of m rows (128 x 128 tiles, row tiles in groups of 8, K-major scales):
  each    one K block per step: product, wait, promote (the kernel's K loop)
  pairs   two products per step, then both promotions
  tma     each, with the a and b tiles loaded by TMA (tensor descriptors made on the host)
  folded  two accumulators, one for even and one for odd K blocks, each kept in units of its latest scale:
          acc = dot(a, b, acc * (previous scale / this scale)), the scale applied once at the end. The dot
          chains into its accumulator, so Triton leaves the odd block's WGMMAs in flight across the loop's
          back edge, while the next step's loads issue (SASS: waits before each rescale). In the kernel
          it was slower and lost bits (the tensor cores add each product into the running sum with
          fewer bits than float32; docs/perf-notes.md)
Each variant is checked against `each` (relative error), timed with CUDA events and the L2 flushed.
python benchmarks/triton_promotion_probe.py [--shape E,m,n,k] [--configs "variant,warps,stages;..."]
"""
import argparse

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from es_dual.bench.timing import time_us

VARIANTS = {"each": 0, "pairs": 1, "folded": 2}


@triton.jit
def _tile(m, n, BM: tl.constexpr, BN: tl.constexpr, GROUP: tl.constexpr):
    """Program (tile, expert)'s (expert, row tile, column tile): row tiles in groups of GROUP."""
    pid = tl.program_id(0)
    m_tiles = m // BM
    n_tiles = n // BN
    group = pid // (GROUP * n_tiles)
    size = min(m_tiles - group * GROUP, GROUP)
    local = pid - group * GROUP * n_tiles
    return tl.program_id(1), group * GROUP + local % size, local // size


@triton.jit
def probe_kernel(a_ptr, b_ptr, as_ptr, bs_ptr, out_ptr, m, n, k, VARIANT: tl.constexpr,
                 BM: tl.constexpr, BN: tl.constexpr, GROUP: tl.constexpr):
    BK: tl.constexpr = 128
    e, m_tile, n_tile = _tile(m, n, BM, BN, GROUP)
    rows = (e * m + m_tile * BM + tl.arange(0, BM)).to(tl.int64)
    cols = (e * n + n_tile * BN + tl.arange(0, BN)).to(tl.int64)
    kk = tl.arange(0, BK)
    k_blocks = k // BK
    a_ptrs = a_ptr + rows[:, None] * k + kk[None, :]
    b_ptrs = b_ptr + cols[:, None] * k + kk[None, :]
    as_ptrs = as_ptr + rows * k_blocks
    bs_ptrs = bs_ptr + (e * (n // 128) + n_tile * BN // 128).to(tl.int64) * k_blocks
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if VARIANT == 0:
        for kb in range(0, k_blocks):
            p = tl.dot(tl.load(a_ptrs), tl.trans(tl.load(b_ptrs)))
            acc += p * (tl.load(as_ptrs + kb) * tl.load(bs_ptrs + kb))[:, None]
            a_ptrs += BK
            b_ptrs += BK
    elif VARIANT == 1:
        for kb in range(0, k_blocks, 2):
            p0 = tl.dot(tl.load(a_ptrs), tl.trans(tl.load(b_ptrs)))
            p1 = tl.dot(tl.load(a_ptrs + BK), tl.trans(tl.load(b_ptrs + BK)))
            acc += p0 * (tl.load(as_ptrs + kb) * tl.load(bs_ptrs + kb))[:, None]
            acc += p1 * (tl.load(as_ptrs + kb + 1) * tl.load(bs_ptrs + kb + 1))[:, None]
            a_ptrs += 2 * BK
            b_ptrs += 2 * BK
    else:
        acc_odd = tl.zeros((BM, BN), dtype=tl.float32)
        s_even = tl.full((BM,), 1.0, tl.float32)
        s_odd = tl.full((BM,), 1.0, tl.float32)
        for kb in range(0, k_blocks, 2):
            n_even = tl.load(as_ptrs + kb) * tl.load(bs_ptrs + kb)
            n_odd = tl.load(as_ptrs + kb + 1) * tl.load(bs_ptrs + kb + 1)
            acc = tl.dot(tl.load(a_ptrs), tl.trans(tl.load(b_ptrs)), acc * (s_even / n_even)[:, None])
            acc_odd = tl.dot(tl.load(a_ptrs + BK), tl.trans(tl.load(b_ptrs + BK)),
                             acc_odd * (s_odd / n_odd)[:, None])
            s_even = n_even
            s_odd = n_odd
            a_ptrs += 2 * BK
            b_ptrs += 2 * BK
        acc = acc * s_even[:, None] + acc_odd * s_odd[:, None]
    out_cols = n_tile * BN + tl.arange(0, BN)
    tl.store(out_ptr + rows[:, None] * n + out_cols[None, :], acc.to(tl.bfloat16))


@triton.jit
def tma_probe_kernel(a_desc, b_desc, as_ptr, bs_ptr, out_ptr, m, n, k, BM: tl.constexpr, BN: tl.constexpr,
                     GROUP: tl.constexpr):
    """`each` with the a and b tiles loaded by TMA (host-made tensor descriptors): one instruction per tile
    instead of each thread's address arithmetic and 16-byte copies."""
    BK: tl.constexpr = 128
    e, m_tile, n_tile = _tile(m, n, BM, BN, GROUP)
    row0 = e * m + m_tile * BM
    col0 = e * n + n_tile * BN
    rows = (row0 + tl.arange(0, BM)).to(tl.int64)
    k_blocks = k // BK
    as_ptrs = as_ptr + rows * k_blocks
    bs_ptrs = bs_ptr + (e * (n // 128) + n_tile * BN // 128).to(tl.int64) * k_blocks
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kb in range(0, k_blocks):
        p = tl.dot(a_desc.load([row0, kb * BK]), tl.trans(b_desc.load([col0, kb * BK])))
        acc += p * (tl.load(as_ptrs + kb) * tl.load(bs_ptrs + kb))[:, None]
    out_cols = n_tile * BN + tl.arange(0, BN)
    tl.store(out_ptr + rows[:, None] * n + out_cols[None, :], acc.to(tl.bfloat16))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="8,4096,4096,7168", help="E,m,n,k (balanced_big)")
    parser.add_argument("--configs", default="each,8,3;pairs,8,3;folded,8,2;folded,8,3;each,8,4;folded,4,2")
    args = parser.parse_args()
    E, m, n, k = map(int, args.shape.split(","))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    a = torch.randn(E * m, k, device=dev).to(torch.float8_e4m3fn)
    b = torch.randn(E * n, k, device=dev).to(torch.float8_e4m3fn)
    a_s = torch.rand(E * m, k // 128, device=dev) + 0.5
    b_s = torch.rand(E * n // 128, k // 128, device=dev) + 0.5
    flops = 2 * E * m * n * k
    reference = None
    for spec in args.configs.split(";"):
        variant, warps, stages = spec.split(",")
        bm = 128 if int(warps) == 8 else 64
        out = torch.empty(E * m, n, dtype=torch.bfloat16, device=dev)
        grid = (m // bm * (n // 128), E)

        def call():
            if variant == "tma":
                a_desc = TensorDescriptor.from_tensor(a, [bm, 128])
                b_desc = TensorDescriptor.from_tensor(b, [128, 128])
                tma_probe_kernel[grid](a_desc, b_desc, a_s, b_s, out, m, n, k, bm, 128, 8,
                                       num_warps=int(warps), num_stages=int(stages))
            else:
                probe_kernel[grid](a, b, a_s, b_s, out, m, n, k, VARIANTS[variant], bm, 128, 8,
                                   num_warps=int(warps), num_stages=int(stages))

        call()
        if reference is None:  # the first variant against float32 math on expert 0's first 128 rows
            reference = out.float().clone()
            a0 = a[:128].float() * a_s[:128].repeat_interleave(128, dim=1)
            b0 = b[:n].float() * b_s[: n // 128].repeat_interleave(128, dim=0).repeat_interleave(128, dim=1)
            exact = a0 @ b0.T
            print(f"first variant vs float32 math: rel err {((reference[:128] - exact).norm() / exact.norm()).item():.1e}")
        err = ((out.float() - reference).norm() / reference.norm()).item()
        us = time_us(call, dev)
        print(f"{spec:<14} {us:9.1f} us  {flops / us / 1e6:7.1f} TFLOPS  rel err vs first {err:.1e}", flush=True)


if __name__ == "__main__":
    main()

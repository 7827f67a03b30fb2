"""Whether a blockwise-scaled FP8 K loop written in Gluon (Triton's explicit-layout dialect) keeps the next
K block's WGMMA on the tensor cores while the previous block's product is scaled into the sum: two
accumulators, `warpgroup_mma_wait(num_outstanding=1)` before each promotion. Compiles only (no GPU): Triton
for sm_90a, then ptxas -v on the PTX, and prints the registers, ptxas's serialization notes and the WGMMA
waits left in the SASS (one per K block when the pipeline holds; one per WGMMA when ptxas serialized them).

python benchmarks/gluon_wgmma_probe.py [--tile 128x64] [--warps 8] [--k-blocks 8] [--runtime-k]
(--runtime-k: the K loop over a run-time count instead of a compile-time one)
Needs Triton with Gluon (3.6), ptxas (nvcc's or Triton's) and cuobjdump (Triton's); see docs/perf-notes.md.
"""
import argparse
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait


@gluon.jit
def _issue(a_desc, b_desc, a_bufs, b_bufs, bars, kb, off_m, off_n, STAGES: gl.constexpr, BK: gl.constexpr):
    """TMA loads of K block kb into its stage."""
    s = kb % STAGES
    mbarrier.expect(bars.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(a_desc, [off_m, kb * BK], bars.index(s), a_bufs.index(s))
    tma.async_copy_global_to_shared(b_desc, [off_n, kb * BK], bars.index(s), b_bufs.index(s))


@gluon.jit
def _product(a_bufs, b_bufs, bars, kb, STAGES: gl.constexpr, layout: gl.constexpr, BM: gl.constexpr,
             BN: gl.constexpr):
    """K block kb's product, started on the tensor cores once its stage has landed."""
    s = kb % STAGES
    mbarrier.wait(bars.index(s), phase=(kb // STAGES) & 1)
    return warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), gl.zeros([BM, BN], gl.float32, layout),
                         use_acc=False, is_async=True)


@gluon.jit
def _promote(total, done, a_scale_ptr, b_scale_ptr, rows, k_blocks, kb):
    scale = gl.load(a_scale_ptr + rows * k_blocks + kb) * gl.load(b_scale_ptr + kb)
    return total + done * scale[:, None]


@gluon.jit
def probe_kernel(a_desc, b_desc, a_scale_ptr, b_scale_ptr, c_ptr, stride_c, k_blocks,
                 K_BLOCKS: gl.constexpr, RUNTIME_K: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = b_desc.block_type.shape[0]
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, BN, 32])
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, BK], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    off_m = gl.program_id(0) * BM
    off_n = gl.program_id(1) * BN
    rows = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
    for kb in gl.static_range(STAGES - 1):
        _issue(a_desc, b_desc, a_bufs, b_bufs, bars, kb, off_m, off_n, STAGES, BK)
    prev = _product(a_bufs, b_bufs, bars, 0, STAGES, layout, BM, BN)
    total = gl.zeros([BM, BN], gl.float32, layout)
    if RUNTIME_K:  # k_blocks >= STAGES here
        for kb in range(1, k_blocks):
            cur = _product(a_bufs, b_bufs, bars, kb, STAGES, layout, BM, BN)
            done = warpgroup_mma_wait(num_outstanding=1, deps=(prev, ))
            if kb + STAGES - 2 < k_blocks:
                _issue(a_desc, b_desc, a_bufs, b_bufs, bars, kb + STAGES - 2, off_m, off_n, STAGES, BK)
            total = _promote(total, done, a_scale_ptr, b_scale_ptr, rows, k_blocks, kb - 1)
            prev = cur
        done = warpgroup_mma_wait(num_outstanding=0, deps=(prev, ))
        total = _promote(total, done, a_scale_ptr, b_scale_ptr, rows, k_blocks, k_blocks - 1)
    else:
        for kb in gl.static_range(1, K_BLOCKS + 1):
            if kb < K_BLOCKS:
                cur = _product(a_bufs, b_bufs, bars, kb, STAGES, layout, BM, BN)
                done = warpgroup_mma_wait(num_outstanding=1, deps=(prev, ))
            else:
                done = warpgroup_mma_wait(num_outstanding=0, deps=(prev, ))
            if kb + STAGES - 2 < K_BLOCKS:  # block kb - 1's stage is free: block kb + STAGES - 2 goes there
                _issue(a_desc, b_desc, a_bufs, b_bufs, bars, kb + STAGES - 2, off_m, off_n, STAGES, BK)
            total = _promote(total, done, a_scale_ptr, b_scale_ptr, rows, K_BLOCKS, kb - 1)
            if kb < K_BLOCKS:
                prev = cur
    cols = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
    gl.store(c_ptr + rows[:, None] * stride_c + cols[None, :], total.to(gl.bfloat16))


def _tool(name: str) -> str:
    for path in (os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name),
                 f"/usr/local/cuda/bin/{name}", f"/usr/local/bin/{name}"):
        if os.path.exists(path):
            return path
    return name


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tile", default="128x64", help="BMxBN (tokens x weight rows)")
    parser.add_argument("--warps", type=int, default=8)
    parser.add_argument("--k-blocks", type=int, default=8)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--runtime-k", action="store_true")
    args = parser.parse_args()
    bm, bn = map(int, args.tile.split("x"))
    layout = "NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)"
    signature = {"a_desc": f"tensordesc<fp8e4nv[{bm}, 128],{layout}>",
                 "b_desc": f"tensordesc<fp8e4nv[{bn}, 128],{layout}>", "a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32", "c_ptr": "*bf16", "stride_c": "i32", "k_blocks": "i32"}
    constants = dict(K_BLOCKS=args.k_blocks, RUNTIME_K=args.runtime_k, STAGES=args.stages, num_warps=args.warps)
    signature.update({name: "constexpr" for name in constants})
    compiled = triton.compile(GluonASTSource(fn=probe_kernel, signature=signature, constexprs=constants, attrs={}),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=args.warps))
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path, cubin = os.path.join(tmp, "probe.ptx"), os.path.join(tmp, "probe.cubin")
        with open(ptx_path, "w") as f:
            f.write(ptx)
        info = subprocess.run([_tool("ptxas"), "-arch=sm_90a", "-v", ptx_path, "-o", cubin],
                              capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    registers = re.search(r"Used (\d+) registers", info)
    notes = re.findall(r"\((C75\d\d)\) ([^\n]*)", info)
    k_kind = "run-time" if args.runtime_k else "compile-time"
    print(f"tile {bm}x{bn}, {args.warps} warps, {args.k_blocks} K blocks ({k_kind} K)")
    waits = re.findall(r"wgmma.wait_group.sync.aligned\s+(\d+)", ptx)
    waits = ", ".join(f"{waits.count(n)} x wait({n})" for n in sorted(set(waits), reverse=True))
    print(f"  PTX: {ptx.count('wgmma.mma_async')} wgmma.mma_async, {waits}")
    print(f"  ptxas: {registers.group(1) if registers else '?'} registers; "
          + ("; ".join(f"{code}: {text[:90]}" for code, text in notes) or "no notes"))
    print(f"  SASS: {sass.count('QGMMA')} QGMMA, {sass.count('WARPGROUP.DEPBAR')} WGMMA waits")


if __name__ == "__main__":
    main()

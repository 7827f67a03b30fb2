"""Whether a blockwise-scaled FP8 K loop written in Gluon (Triton's explicit-layout dialect) keeps the next
K block's WGMMA on the tensor cores while the previous block's product is scaled into the sum: two
accumulators, `warpgroup_mma_wait(num_outstanding=1)` before each promotion. Compiles only (no GPU): Triton
for sm_90a, then ptxas -v on the PTX, and prints the registers, ptxas's serialization notes and the WGMMA
waits left in the SASS (one per K block when the pipeline holds; one per WGMMA when ptxas serialized them).

python benchmarks/gluon_wgmma_probe.py [--tile 128x64] [--warps 8] [--k-blocks 8] [--runtime-k]
                                        [--warp-specialize WARPS,REGS]
(--runtime-k: the K loop over a run-time count instead of a compile-time one; --warp-specialize: the TMA
loads in a producer partition of WARPS warps with REGS registers, the math warps given the rest)
The library's kernel built on these findings is es_dual/triton_ref/hopper.py (tests/test_triton_compiles.py
checks its WGMMA waits the same way).
Needs Triton 3.6's Gluon (the GPU machine's; its PTX from Triton 3.9 comes out of ptxas serialized: on another
Triton, a venv with `pip install triton==3.6.0 torch==2.13.0`), es_dual importable (PYTHONPATH=. from the
repository root), ptxas (nvcc's or Triton's) and cuobjdump (Triton's); see docs/perf-notes.md.
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

from es_dual.triton_ref.hopper import allocate_stages


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
def _k_loop(a_desc, b_desc, a_bufs, b_bufs, ready, empty, a_scale_ptr, b_scale_ptr, rows, off_m, off_n, k_blocks,
            K_BLOCKS: gl.constexpr, RUNTIME_K: gl.constexpr, WARP_SPECIALIZED: gl.constexpr, STAGES: gl.constexpr,
            layout: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr):
    """The promoted sum: block kb's WGMMAs issued, block kb - 1's waited for with one group in flight
    (wait(1)), its stage freed, its product promoted; over a run-time count (RUNTIME_K) or in straight-line
    code (K_BLOCKS compiled in). A freed stage is handed to the producer partition (WARP_SPECIALIZED: an
    arrival on `empty`) or refilled here by TMA with block kb + STAGES - 2 (the first STAGES - 1 blocks
    issued before)."""
    BK: gl.constexpr = a_bufs.type.shape[2]
    if not WARP_SPECIALIZED:
        for kb in gl.static_range(STAGES - 1):
            _issue(a_desc, b_desc, a_bufs, b_bufs, ready, kb, off_m, off_n, STAGES, BK)
    prev = _product(a_bufs, b_bufs, ready, 0, STAGES, layout, BM, BN)
    total = gl.zeros([BM, BN], gl.float32, layout)
    if RUNTIME_K:  # k_blocks >= STAGES here
        for kb in range(1, k_blocks):
            cur = _product(a_bufs, b_bufs, ready, kb, STAGES, layout, BM, BN)
            done = warpgroup_mma_wait(num_outstanding=1, deps=(prev, ))
            _free_stage(a_desc, b_desc, a_bufs, b_bufs, ready, empty, kb - 1, k_blocks, off_m, off_n,
                        WARP_SPECIALIZED, STAGES, BK)
            total = _promote(total, done, a_scale_ptr, b_scale_ptr, rows, k_blocks, kb - 1)
            prev = cur
        done = warpgroup_mma_wait(num_outstanding=0, deps=(prev, ))
        total = _promote(total, done, a_scale_ptr, b_scale_ptr, rows, k_blocks, k_blocks - 1)
    else:
        for kb in gl.static_range(1, K_BLOCKS + 1):
            if kb < K_BLOCKS:
                cur = _product(a_bufs, b_bufs, ready, kb, STAGES, layout, BM, BN)
                done = warpgroup_mma_wait(num_outstanding=1, deps=(prev, ))
            else:
                done = warpgroup_mma_wait(num_outstanding=0, deps=(prev, ))
            _free_stage(a_desc, b_desc, a_bufs, b_bufs, ready, empty, kb - 1, K_BLOCKS, off_m, off_n,
                        WARP_SPECIALIZED, STAGES, BK)
            total = _promote(total, done, a_scale_ptr, b_scale_ptr, rows, K_BLOCKS, kb - 1)
            if kb < K_BLOCKS:
                prev = cur
    return total


@gluon.jit
def _free_stage(a_desc, b_desc, a_bufs, b_bufs, ready, empty, kb, k_blocks, off_m, off_n,
                WARP_SPECIALIZED: gl.constexpr, STAGES: gl.constexpr, BK: gl.constexpr):
    """Block kb's stage, its WGMMAs done: to the producer partition, or refilled with block kb + STAGES - 1."""
    if WARP_SPECIALIZED:
        gl.thread_barrier()  # every math warp past its wait: one arrival per CTA
        mbarrier.arrive(empty.index(kb % STAGES))
    elif kb + STAGES - 1 < k_blocks:
        _issue(a_desc, b_desc, a_bufs, b_bufs, ready, kb + STAGES - 1, off_m, off_n, STAGES, BK)


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
    total = _k_loop(a_desc, b_desc, a_bufs, b_bufs, bars, bars, a_scale_ptr, b_scale_ptr, rows, off_m, off_n,
                    k_blocks, K_BLOCKS, RUNTIME_K, False, STAGES, layout, BM, BN)
    cols = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
    gl.store(c_ptr + rows[:, None] * stride_c + cols[None, :], total.to(gl.bfloat16))


@gluon.jit
def _ws_producer(a_desc, b_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, k_blocks, STAGES: gl.constexpr):
    """The TMA warps: K block kb into stage kb % STAGES once the math warps freed it."""
    BK: gl.constexpr = a_desc.block_type.shape[1]
    for kb in range(k_blocks):
        s = kb % STAGES
        mbarrier.wait(empty.index(s), phase=((kb // STAGES) & 1) ^ 1, pred=kb >= STAGES)
        mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(a_desc, [off_m, kb * BK], ready.index(s), a_bufs.index(s))
        tma.async_copy_global_to_shared(b_desc, [off_n, kb * BK], ready.index(s), b_bufs.index(s))


@gluon.jit
def _ws_math(a_desc, b_desc, a_bufs, b_bufs, ready, empty, a_scale_ptr, b_scale_ptr, c_ptr, stride_c, off_m,
             out_col, k_blocks, K_BLOCKS: gl.constexpr, RUNTIME_K: gl.constexpr, STAGES: gl.constexpr,
             BM: gl.constexpr, BN: gl.constexpr, num_warps: gl.constexpr):
    """The math warps: _k_loop, each freed stage handed to the producer partition."""
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, BN, 32])
    rows = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
    total = _k_loop(a_desc, b_desc, a_bufs, b_bufs, ready, empty, a_scale_ptr, b_scale_ptr, rows, off_m, 0,
                    k_blocks, K_BLOCKS, RUNTIME_K, True, STAGES, layout, BM, BN)
    cols = out_col + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
    gl.store(c_ptr + rows[:, None] * stride_c + cols[None, :], total.to(gl.bfloat16))


@gluon.jit
def ws_probe_kernel(a_desc, b_desc, a_scale_ptr, b_scale_ptr, c_ptr, stride_c, k_blocks,
                    K_BLOCKS: gl.constexpr, RUNTIME_K: gl.constexpr, STAGES: gl.constexpr,
                    PRODUCER_WARPS: gl.constexpr, PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """probe_kernel's compile-time K loop with warp specialization, as DeepGEMM is built: PRODUCER_WARPS
    warps with PRODUCER_REGS registers issue the TMA loads, the num_warps math warps only wait, multiply
    and promote (Triton gives them the registers the producer gives up)."""
    off_m = gl.program_id(0) * a_desc.block_type.shape[0]
    off_n = gl.program_id(1) * b_desc.block_type.shape[0]
    warp_specialized_tile(a_desc, b_desc, a_scale_ptr, b_scale_ptr, c_ptr, stride_c, off_m, off_n, off_n, k_blocks,
                          K_BLOCKS, RUNTIME_K, STAGES, PRODUCER_WARPS, PRODUCER_REGS, num_warps)


@gluon.jit
def warp_specialized_tile(a_desc, b_desc, a_scale_ptr, b_scale_ptr, c_ptr, stride_c, off_m, off_n, out_col,
                          k_blocks, K_BLOCKS: gl.constexpr, RUNTIME_K: gl.constexpr, STAGES: gl.constexpr,
                          PRODUCER_WARPS: gl.constexpr, PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """One output tile: a's rows from off_m, b's from off_n, stored at c's rows from off_m and columns from
    out_col; the stages and their barriers, then the math and producer partitions."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BN: gl.constexpr = b_desc.block_type.shape[0]
    a_bufs, b_bufs, ready, empty = allocate_stages(a_desc, b_desc, STAGES)
    gl.warp_specialize([
        (_ws_math, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, a_scale_ptr, b_scale_ptr, c_ptr, stride_c, off_m,
                    out_col, k_blocks, K_BLOCKS, RUNTIME_K, STAGES, BM, BN, num_warps)),
        (_ws_producer, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, k_blocks, STAGES)),
    ], [PRODUCER_WARPS], [PRODUCER_REGS])


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
    parser.add_argument("--warp-specialize", metavar="WARPS,REGS",
                        help="ws_probe_kernel: a TMA producer of WARPS warps with REGS registers (e.g. 4,40)")
    args = parser.parse_args()
    bm, bn = map(int, args.tile.split("x"))
    layout = "NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)"
    signature = {"a_desc": f"tensordesc<fp8e4nv[{bm}, 128],{layout}>",
                 "b_desc": f"tensordesc<fp8e4nv[{bn}, 128],{layout}>", "a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32", "c_ptr": "*bf16", "stride_c": "i32", "k_blocks": "i32"}
    constants = dict(K_BLOCKS=args.k_blocks, RUNTIME_K=args.runtime_k, STAGES=args.stages, num_warps=args.warps)
    kernel = probe_kernel
    if args.warp_specialize:
        kernel = ws_probe_kernel
        producer_warps, producer_regs = map(int, args.warp_specialize.split(","))
        constants.update(PRODUCER_WARPS=producer_warps, PRODUCER_REGS=producer_regs)
    k_kind = "run-time" if args.runtime_k else "compile-time"
    print(f"tile {bm}x{bn}, {args.warps} warps, {args.k_blocks} K blocks ({k_kind} K)")
    compile_report(kernel, signature, constants, args.warps)


def compile_report(kernel, signature: dict, constants: dict, warps: int) -> str:
    """Compile a Gluon kernel for sm_90a (signature: the non-constexpr parameters' types), run ptxas -v on
    its PTX and print the WGMMAs and their waits (PTX and SASS), setmaxnreg, registers and ptxas's notes;
    returns the SASS."""
    signature = dict(signature, **{name: "constexpr" for name in constants})
    compiled = triton.compile(GluonASTSource(fn=kernel, signature=signature, constexprs=constants, attrs={}),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path, cubin = os.path.join(tmp, "probe.ptx"), os.path.join(tmp, "probe.cubin")
        with open(ptx_path, "w") as f:
            f.write(ptx)
        info = subprocess.run([_tool("ptxas"), "-arch=sm_90a", "-v", ptx_path, "-o", cubin],
                              capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    registers = re.search(r"Used (\d+) registers", info)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    notes = re.findall(r"\((C75\d\d)\) ([^\n]*)", info)
    waits = re.findall(r"wgmma.wait_group.sync.aligned\s+(\d+)", ptx)
    waits = ", ".join(f"{waits.count(n)} x wait({n})" for n in sorted(set(waits), reverse=True))
    regs = ", ".join(f"{op} {n}" for op, n in re.findall(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx))
    print(f"  PTX: {ptx.count('wgmma.mma_async')} wgmma.mma_async, {waits}" + (f"; setmaxnreg {regs}" if regs else ""))
    print(f"  ptxas: {registers.group(1) if registers else '?'} registers, {compiled.metadata.shared} B shared, "
          f"spills {spills.group(1) if spills else '?'} B stored, {spills.group(2) if spills else '?'} B loaded; "
          + ("; ".join(f"{code}: {text[:200]}" for code, text in notes) or "no notes"))
    print(f"  SASS: {sass.count('QGMMA')} QGMMA, {sass.count('WARPGROUP.DEPBAR')} WGMMA waits")
    return sass

if __name__ == "__main__":
    main()

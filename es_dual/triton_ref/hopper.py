"""The Triton backend's 128 x 128 tile on Hopper, written in Gluon (Triton's explicit-layout dialect):
kernel.py's function for that tile, built so that the tensor cores do not wait for the promotions.

Why: in kernel.py's K loop ptxas serializes the WGMMAs (one wait per WGMMA, at 255 registers), so every
K block's promotion (its product scaled into the float32 sum) stalls the tensor cores: balanced_big ran at
54-56 % of the FP8 rate on an H100 (docs/perf-notes.md). Here one CTA computes one 128 x 128 output tile
in two parts (gl.warp_specialize), the way DeepGEMM's kernels are built:

  - the producer (PRODUCER_WARPS warps, PRODUCER_REGS registers each) issues the TMA loads of every K
    block's a and b tiles into STAGES shared-memory stages: ``ready[s]`` completes when the stage's bytes
    have landed, ``empty[s]`` when the math warps have released it;
  - the math warps (the launch's 8: two warp groups of 64 rows, given the registers the producer gives up)
    issue block kb's WGMMAs and load its scales, then wait for block kb - 1's WGMMAs with kb's still in
    flight (warpgroup_mma_wait(1)), release kb - 1's stage and promote its product:

        total += product[kb - 1] * (a_scale[rows, kb - 1] * b_scale[expert, n_tile, kb - 1])[:, None]

    the same float32 operations, in the same order, as kernel.py's.

The K loop is unrolled (K_BLOCKS is compiled in: one compilation per k): over a run-time count ptxas
serializes the WGMMAs again (benchmarks/gluon_wgmma_probe.py). The tile map is kernel.py's: the row tiles
of each expert, located by a scan of the offsets (masked layout and row-count limits included), taken in
groups of ROW_GROUP row tiles. A tile's rows past its expert's end are loaded (the next expert's rows, or
zeros that TMA fills past the tensor's end) and never stored; K past k reads TMA's zeros. n must be a
multiple of 128 (launch.hopper_tile_reasons): the store masks rows only.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .kernel import _tile_in_order, locate_in_chunks

BLOCK = gl.constexpr(128)  # the tile's rows, columns and K block: one scale block each way
MATH_WARPS = 8
PRODUCER_WARPS = gl.constexpr(4)
PRODUCER_REGS = gl.constexpr(40)  # TMA issue only; the math warps get the rest (setmaxnreg)
# Names that changed after Triton 3.6 (gl.thread_barrier became gl.barrier, tma.async_copy_global_to_shared
# tma.async_load): the kernels call whichever this Triton has.
_partition_barrier = getattr(gl, "thread_barrier", None) or gl.barrier
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared


def tile_descriptors(a, b) -> tuple:
    """The TMA descriptors of a seen as (rows, k) (the masked layout's (E, max_m, k) too) and of b seen as
    (E * n, k), in 128 x 128 boxes."""
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)
    return tuple(TensorDescriptor.from_tensor(t.reshape(-1, t.shape[-1]), [BLOCK.value] * 2, layout) for t in (a, b))


@gluon.jit
def _producer(a_desc, b_desc, a_bufs, b_bufs, ready, empty, a_row, b_row, K_BLOCKS: gl.constexpr,
              STAGES: gl.constexpr):
    """The TMA warps: K block kb into stage kb % STAGES once the math warps have released it."""
    for kb in range(K_BLOCKS):
        s = kb % STAGES
        mbarrier.wait(empty.index(s), phase=((kb // STAGES) & 1) ^ 1, pred=kb >= STAGES)
        mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
        _tma_load(a_desc, [a_row, kb * BLOCK], ready.index(s), a_bufs.index(s))
        _tma_load(b_desc, [b_row, kb * BLOCK], ready.index(s), b_bufs.index(s))


@gluon.jit
def _product(a_bufs, b_bufs, ready, kb, STAGES: gl.constexpr, layout: gl.constexpr):
    """K block kb's 128 x 128 product, started on the tensor cores once its stage has landed."""
    s = kb % STAGES
    mbarrier.wait(ready.index(s), phase=(kb // STAGES) & 1)
    return warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)),
                         gl.zeros([BLOCK, BLOCK], gl.float32, layout), use_acc=False, is_async=True)


@gluon.jit
def _scales(a_scale_rows, b_scale_tile, row_ok, kb, stride_ask):
    """K block kb's scale of each row: its activation scale times the tile's weight scale."""
    return gl.load(a_scale_rows + kb * stride_ask, mask=row_ok, other=0.0) * gl.load(b_scale_tile + kb)


@gluon.jit
def _math(a_bufs, b_bufs, ready, empty, a_scale_ptr, b_scale_tile, out_ptr, row0, row_end, col0, stride_asm,
          stride_ask, stride_om, K_BLOCKS: gl.constexpr, STAGES: gl.constexpr):
    """The math warps: the unrolled K loop (module docstring), then the tile's rows < row_end stored."""
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps(), 1],
                                                     instr_shape=[16, BLOCK, 32])
    rows = row0 + gl.arange(0, BLOCK, layout=gl.SliceLayout(1, layout))
    row_ok = rows < row_end
    rows64 = rows.to(gl.int64)
    a_scale_rows = a_scale_ptr + rows64 * stride_asm
    pending = _product(a_bufs, b_bufs, ready, 0, STAGES, layout)
    pending_scale = _scales(a_scale_rows, b_scale_tile, row_ok, 0, stride_ask)
    total = gl.zeros([BLOCK, BLOCK], gl.float32, layout)
    for kb in gl.static_range(1, K_BLOCKS + 1):
        if kb < K_BLOCKS:  # block kb on the tensor cores, its scales on their way, while kb - 1 finishes
            issued = _product(a_bufs, b_bufs, ready, kb, STAGES, layout)
            issued_scale = _scales(a_scale_rows, b_scale_tile, row_ok, kb, stride_ask)
            done = warpgroup_mma_wait(num_outstanding=1, deps=(pending, ))
        else:
            done = warpgroup_mma_wait(num_outstanding=0, deps=(pending, ))
        _partition_barrier()  # both warp groups past their wait: the stage is free (one arrival per CTA)
        mbarrier.arrive(empty.index((kb - 1) % STAGES), count=1)
        total = total + done * pending_scale[:, None]
        if kb < K_BLOCKS:
            pending = issued
            pending_scale = issued_scale
    cols = col0 + gl.arange(0, BLOCK, layout=gl.SliceLayout(0, layout))
    out_ptrs = out_ptr + rows64[:, None] * stride_om + cols[None, :]
    # Rows only: n is a multiple of 128 here. A column mask too made ptxas serialize the WGMMAs (C7512,
    # not enough registers): it computes the 64 column predicates of a thread before the K loop.
    gl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@gluon.jit
def allocate_stages(a_desc, b_desc, STAGES: gl.constexpr):
    """STAGES shared-memory stages of an a and a b box, and their `ready` and `empty` barriers."""
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    return a_bufs, b_bufs, ready, empty


@gluon.jit
def large_tile_kernel(
    a_desc, b_desc, a_scale_ptr, b_scale_ptr, offsets_ptr, out_ptr,
    total_m, n, num_experts, max_m, min_rows, max_rows,
    stride_asm, stride_ask, stride_bse, stride_bsn, stride_om,
    K_BLOCKS: gl.constexpr, EXPERT_CHUNK: gl.constexpr, MASKED: gl.constexpr, ROW_GROUP: gl.constexpr,
    STAGES: gl.constexpr,
):
    """Program (row tile, column tile) of kernel.grouped_gemm_fp8_kernel's grid for 128 x 128 tiles: the
    tile located, then, for a real tile, its stages and barriers and the two partitions."""
    m_tile, n_tile = _tile_in_order(gl.program_id(1) * gl.num_programs(0) + gl.program_id(0), gl.num_programs(0),
                                    gl.num_programs(1), ROW_GROUP)
    experts: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    expert, tiles_before, row_lo, row_end, _ = locate_in_chunks(
        offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, m_tile,
        gl.arange(0, EXPERT_CHUNK, layout=experts), BLOCK, EXPERT_CHUNK, MASKED)
    row0 = row_lo + (m_tile - tiles_before) * BLOCK
    if expert < num_experts:
        a_bufs, b_bufs, ready, empty = allocate_stages(a_desc, b_desc, STAGES)
        b_scale_tile = b_scale_ptr + expert.to(gl.int64) * stride_bse + n_tile * stride_bsn
        gl.warp_specialize([
            (_math, (a_bufs, b_bufs, ready, empty, a_scale_ptr, b_scale_tile, out_ptr, row0, row_end,
                     n_tile * BLOCK, stride_asm, stride_ask, stride_om, K_BLOCKS, STAGES)),
            (_producer, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, row0, expert * n + n_tile * BLOCK, K_BLOCKS,
                         STAGES)),
        ], [PRODUCER_WARPS], [PRODUCER_REGS])

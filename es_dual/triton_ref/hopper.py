"""The Triton backend's 128 x 128 tile on Hopper, written in Gluon (Triton's explicit-layout dialect):
kernel.py's function for that tile, built so that the tensor cores do not wait for the promotions.

Why: in kernel.py's K loop ptxas serializes the WGMMAs (one wait per WGMMA, at 255 registers), so every
K block's promotion (its product scaled into the float32 sum) stalls the tensor cores: balanced_big ran at
54-56 % of the FP8 rate on an H100 (docs/perf-notes.md). Here each program computes 128 x 128 output tiles
in two parts (gl.warp_specialize), the way DeepGEMM's kernels are built:

  - the producer (PRODUCER_WARPS warps, PRODUCER_REGS registers each) issues the TMA loads of every K
    block's a and b tiles into STAGES shared-memory stages: ``ready[s]`` completes when the stage's bytes
    have landed, ``empty[s]`` when every math partition has released it;
  - the math warps, two warp groups of 64 rows given the registers the producer gives up, in one partition
    (MATH_PARTITIONS = 1: the launch's 8 warps, in lock-step at every stage release) or one partition each
    (2: the launch's 4 warps and a worker partition of 4, each releasing stages on its own, so that one
    group's WGMMAs can run while the other promotes), issue block kb's WGMMAs and load its scales, then
    wait for block kb - 1's WGMMAs with kb's still in flight (warpgroup_mma_wait(1)), release kb - 1's
    stage and promote its product:

        total += product[kb - 1] * (a_scale[rows, kb - 1] * b_scale[expert, n_tile, kb - 1])[:, None]

    the same float32 operations, in the same order, as kernel.py's.

The K loop runs over k_blocks, a run-time count (one compilation for every k), in rounds of K_GROUP
blocks unrolled. No WGMMA may be in flight across the loop's back edge (ptxas then serializes them all),
so each round ends by waiting for its last block and promoting it: the tensor cores idle for that once
per round. One unrolled sequence of every K block (an earlier form) was about 90 KB of code at k = 7168
and ran 5x slower than kernel.py's tile on an H100 (docs/perf-notes.md): the math warps fetched the code
anew for every tile.

The tile map is kernel.py's: the row tiles of each expert, located by a scan of the offsets (masked layout
and row-count limits included), taken in groups of ROW_GROUP row tiles. Program p takes tiles p, p + P,
p + 2P, ... of that order (P programs: one per tile, or a persistent grid), each partition locating them
itself; the stages are one ring over all the program's K blocks, so in a persistent grid the producer
loads the next tile's first blocks while the math warps finish and store the current one. A tile's rows
past its expert's end are loaded (the next expert's rows, or zeros that TMA fills past the tensor's end)
and never stored; K past k reads TMA's zeros. n must be a multiple of 128 (launch.hopper_tile_reasons):
the store masks rows only.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .kernel import _tile_in_order, locate_in_chunks

BLOCK = gl.constexpr(128)  # the tile's rows, columns and K block: one scale block each way
MATH_WARPS = 8  # two warp groups of 64 rows
PRODUCER_WARPS = gl.constexpr(4)
PRODUCER_REGS = gl.constexpr(40)  # TMA issue only; the math warps get the rest (setmaxnreg)
MATH_REGS = gl.constexpr(232)  # a second math partition's: what the producer gives up, shared alike
# K blocks per round of the math warps' loop (_math). Compiled for sm_90a by Triton 3.6 (the GPU machine's):
# 2, no spills (3.9 too); 3, 728 B of spill stores (the sum partly in local memory); 4 and 8, the WGMMAs
# serialized (C7512, "insufficient register resources").
K_GROUP = gl.constexpr(2)
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
def _locate(t, offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, m_tiles, n_tiles,
            EXPERT_CHUNK: gl.constexpr, MASKED: gl.constexpr, ROW_GROUP: gl.constexpr):
    """Tile t of the launch order: (its expert, num_experts for a tile past the last; its first row; its
    expert's end row; its column tile), found by kernel.py's scan, in whichever partition asks."""
    m_tile, n_tile = _tile_in_order(t, m_tiles, n_tiles, ROW_GROUP)
    experts: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    expert, tiles_before, row_lo, row_end, _ = locate_in_chunks(
        offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, m_tile,
        gl.arange(0, EXPERT_CHUNK, layout=experts), BLOCK, EXPERT_CHUNK, MASKED)
    return expert, row_lo + (m_tile - tiles_before) * BLOCK, row_end, n_tile


@gluon.jit
def _producer(producer_args, EXPERT_CHUNK: gl.constexpr, MASKED: gl.constexpr, ROW_GROUP: gl.constexpr,
              STAGES: gl.constexpr):
    """The TMA warps: for each of the program's tiles, K block kb into the next stage once the math warps
    have released it (the stages are a ring over all the program's K blocks: block g in stage g % STAGES;
    producer_args: large_tile_kernel's)."""
    (a_desc, b_desc, a_bufs, b_bufs, ready, empty, offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows,
     m_tiles, n_tiles, n, k_blocks) = producer_args
    g = 0
    for t in range(gl.program_id(0), m_tiles * n_tiles, gl.num_programs(0)):
        expert, row0, _, n_tile = _locate(t, offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, m_tiles,
                                          n_tiles, EXPERT_CHUNK, MASKED, ROW_GROUP)
        if expert < num_experts:
            for kb in range(k_blocks):
                s = g % STAGES
                mbarrier.wait(empty.index(s), phase=((g // STAGES) & 1) ^ 1, pred=g >= STAGES)
                mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
                _tma_load(a_desc, [row0, kb * BLOCK], ready.index(s), a_bufs.index(s))
                _tma_load(b_desc, [expert * n + n_tile * BLOCK, kb * BLOCK], ready.index(s), b_bufs.index(s))
                g += 1


@gluon.jit
def _product(a_bufs, b_bufs, ready, g, STAGES: gl.constexpr, layout: gl.constexpr, PART: gl.constexpr,
             ROWS: gl.constexpr):
    """The product of the rows PART * ROWS .. + ROWS and the 128 columns of the K block in the ring's
    block g, started on the tensor cores once its stage has landed."""
    s = g % STAGES
    mbarrier.wait(ready.index(s), phase=(g // STAGES) & 1)
    a = a_bufs.index(s)
    if ROWS < BLOCK:
        a = a.slice(PART * ROWS, ROWS)
    return warpgroup_mma(a, b_bufs.index(s).permute((1, 0)), gl.zeros([ROWS, BLOCK], gl.float32, layout),
                         use_acc=False, is_async=True)


@gluon.jit
def _scales(a_scale_rows, b_scale_tile, row_ok, kb, stride_ask):
    """K block kb's scale of each row: its activation scale times the tile's weight scale."""
    return gl.load(a_scale_rows + kb * stride_ask, mask=row_ok, other=0.0) * gl.load(b_scale_tile + kb)


@gluon.jit
def _release(empty, g, STAGES: gl.constexpr):
    """The ring's block g handed back to the producer, once every warp of this math partition is past its
    wait for it (one arrival per partition)."""
    _partition_barrier()
    mbarrier.arrive(empty.index(g % STAGES), count=1)


@gluon.jit
def _k_blocks(a_bufs, b_bufs, ready, empty, a_scale_rows, b_scale_tile, row_ok, stride_ask, total, first, g,
              COUNT: gl.constexpr, STAGES: gl.constexpr, layout: gl.constexpr, PART: gl.constexpr, ROWS: gl.constexpr):
    """K blocks first .. first + COUNT - 1 (the ring's blocks g .. g + COUNT - 1) promoted into total,
    unrolled: each block is issued before the previous one's promotion, so the tensor cores stay busy; the
    last block is waited for and promoted at the end (nothing in flight on return: the caller's loop can
    go round)."""
    pending = _product(a_bufs, b_bufs, ready, g, STAGES, layout, PART, ROWS)
    pending_scale = _scales(a_scale_rows, b_scale_tile, row_ok, first, stride_ask)
    for j in gl.static_range(1, COUNT + 1):
        if j < COUNT:  # block first + j on the tensor cores while first + j - 1 finishes
            issued = _product(a_bufs, b_bufs, ready, g + j, STAGES, layout, PART, ROWS)
            issued_scale = _scales(a_scale_rows, b_scale_tile, row_ok, first + j, stride_ask)
            done = warpgroup_mma_wait(num_outstanding=1, deps=(pending, ))
        else:
            done = warpgroup_mma_wait(num_outstanding=0, deps=(pending, ))
        _release(empty, g + j - 1, STAGES)
        total = total + done * pending_scale[:, None]
        if j < COUNT:
            pending = issued
            pending_scale = issued_scale
    return total


@gluon.jit
def _math(math_args, EXPERT_CHUNK: gl.constexpr, MASKED: gl.constexpr, ROW_GROUP: gl.constexpr,
          STAGES: gl.constexpr, PART: gl.constexpr, ROWS: gl.constexpr):
    """A math partition: for each of the program's tiles, the K loop (module docstring) for the tile's rows
    PART * ROWS .. + ROWS, then those of them < the expert's end row stored (math_args: large_tile_kernel's)."""
    (a_bufs, b_bufs, ready, empty, a_scale_ptr, b_scale_ptr, offsets_ptr, out_ptr, num_experts, total_m, max_m,
     min_rows, max_rows, m_tiles, n_tiles, k_blocks, stride_asm, stride_ask, stride_bse, stride_bsn,
     stride_om) = math_args
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps(), 1],
                                                     instr_shape=[16, BLOCK, 32])
    g = 0  # the ring's next block (_producer)
    for t in range(gl.program_id(0), m_tiles * n_tiles, gl.num_programs(0)):
        expert, row0, row_end, n_tile = _locate(t, offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows,
                                                m_tiles, n_tiles, EXPERT_CHUNK, MASKED, ROW_GROUP)
        if expert < num_experts:
            rows = row0 + PART * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
            row_ok = rows < row_end
            rows64 = rows.to(gl.int64)
            a_scale_rows = a_scale_ptr + rows64 * stride_asm
            b_scale_tile = b_scale_ptr + expert.to(gl.int64) * stride_bse + n_tile * stride_bsn
            total = gl.zeros([ROWS, BLOCK], gl.float32, layout)
            # Rounds of K_GROUP blocks in a run-time loop, then the blocks left one at a time (module docstring).
            grouped_end = k_blocks // K_GROUP * K_GROUP
            for first in range(0, grouped_end, K_GROUP):
                total = _k_blocks(a_bufs, b_bufs, ready, empty, a_scale_rows, b_scale_tile, row_ok, stride_ask,
                                  total, first, g + first, K_GROUP, STAGES, layout, PART, ROWS)
            for first in range(grouped_end, k_blocks):
                total = _k_blocks(a_bufs, b_bufs, ready, empty, a_scale_rows, b_scale_tile, row_ok, stride_ask,
                                  total, first, g + first, 1, STAGES, layout, PART, ROWS)
            g += k_blocks
            cols = n_tile * BLOCK + gl.arange(0, BLOCK, layout=gl.SliceLayout(0, layout))
            out_ptrs = out_ptr + rows64[:, None] * stride_om + cols[None, :]
            # Rows only: n is a multiple of 128 here. A column mask too made ptxas serialize the WGMMAs
            # (C7512, not enough registers): it computes the 64 column predicates of a thread before the K loop.
            gl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@gluon.jit
def allocate_stages(a_desc, b_desc, STAGES: gl.constexpr, RELEASES: gl.constexpr = 1):
    """STAGES shared-memory stages of an a and a b box, and their `ready` and `empty` barriers (`empty`
    completes after RELEASES arrivals)."""
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=RELEASES)
    return a_bufs, b_bufs, ready, empty


@gluon.jit
def large_tile_kernel(
    a_desc, b_desc, a_scale_ptr, b_scale_ptr, offsets_ptr, out_ptr,
    total_m, n, num_experts, max_m, min_rows, max_rows, m_tiles, n_tiles, k_blocks,
    stride_asm, stride_ask, stride_bse, stride_bsn, stride_om,
    EXPERT_CHUNK: gl.constexpr, MASKED: gl.constexpr, ROW_GROUP: gl.constexpr, STAGES: gl.constexpr,
    MATH_PARTITIONS: gl.constexpr,
):
    """Tiles program_id, + num_programs, ... of the m_tiles x n_tiles tiles of kernel.py's map in its launch
    order (a grid of one program per tile, or a persistent one): the stages and barriers, then the
    partitions, each walking the program's tiles: the producer and MATH_PARTITIONS math partitions of the
    launch's warps each (MATH_WARPS // MATH_PARTITIONS: the first math partition is the launch's own warps)."""
    a_bufs, b_bufs, ready, empty = allocate_stages(a_desc, b_desc, STAGES, MATH_PARTITIONS)
    rows: gl.constexpr = BLOCK // MATH_PARTITIONS
    # The run-time arguments as one tuple each; the constexprs written out in every partition's (a tuple
    # held in a variable, or built by `+`, loses its constexprs in a worker partition).
    math_args = (a_bufs, b_bufs, ready, empty, a_scale_ptr, b_scale_ptr, offsets_ptr, out_ptr, num_experts, total_m,
                 max_m, min_rows, max_rows, m_tiles, n_tiles, k_blocks, stride_asm, stride_ask, stride_bse,
                 stride_bsn, stride_om)
    producer_args = (a_desc, b_desc, a_bufs, b_bufs, ready, empty, offsets_ptr, num_experts, total_m, max_m, min_rows,
                     max_rows, m_tiles, n_tiles, n, k_blocks)
    if MATH_PARTITIONS == 1:  # both warp groups in one partition, in lock-step at every release
        gl.warp_specialize([
            (_math, (math_args, EXPERT_CHUNK, MASKED, ROW_GROUP, STAGES, 0, rows)),
            (_producer, (producer_args, EXPERT_CHUNK, MASKED, ROW_GROUP, STAGES)),
        ], [PRODUCER_WARPS], [PRODUCER_REGS])
    else:  # one warp group each: one group's WGMMAs can run while the other promotes
        gl.warp_specialize([
            (_math, (math_args, EXPERT_CHUNK, MASKED, ROW_GROUP, STAGES, 0, rows)),
            (_math, (math_args, EXPERT_CHUNK, MASKED, ROW_GROUP, STAGES, 1, rows)),
            (_producer, (producer_args, EXPERT_CHUNK, MASKED, ROW_GROUP, STAGES)),
        ], [gl.num_warps(), PRODUCER_WARPS], [MATH_REGS, PRODUCER_REGS])

"""Launcher of the Triton grouped GEMM: tile choice from what the host knows, grid upper bound, launch.

A tile is kernel.py's kernel, or, for a TileConfig with hopper_stages on an sm_90 GPU, hopper.py's
warp-specialized Gluon kernel for the same 128 x 128 tile and the same tile map (hopper_tile_reasons says
where it cannot run; kernel.py's tile runs there instead).

The host knows total_m, n, k and E, never the per-expert counts. Two ways to choose tiles:
- one tile for the call, from the mean tokens per expert (TILE_CONFIGS, the default);
- expert specialization (TRITON_BUCKETS): one launch per bucket of experts by row count, each with its own
  tile, the experts routed to their bucket on the device (the kernel's min_rows / max_rows). A bucket whose
  smallest expert cannot fit in total_m rows is not launched.
Each launch's grid is sized by the bound sum_e cdiv(m_e, BLOCK_M) <= cdiv(total_m, BLOCK_M) + E.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import triton

from ..device import device_capability, device_properties
from ..problem import SCALE_BLOCK, Problem, cdiv
from .direct import DirectLaunch
from .kernel import grouped_gemm_fp8_kernel, grouped_gemm_fp8_two_kinds_kernel


@dataclass(frozen=True)
class TileConfig:
    max_mean_tokens: float  # the first row whose bound is >= total_m / E is used
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    programs_per_sm: int = 0  # > 0: a persistent grid of this many programs per SM; 0: one program per tile
    row_group: int = 0  # one program per tile: row tiles per group of the launch order (kernel._tile_in_order)
    # > 0: the 128 x 128 tile, 8 warps, runs as hopper.large_tile_kernel (Gluon, warp-specialized) with this
    # many shared-memory stages where hopper_tile_reasons has none (its programs walk the tiles in launch
    # order: one per tile, or programs_per_sm per SM); elsewhere it runs as kernel.py's with num_stages.
    hopper_stages: int = 0
    # hopper.large_tile_kernel's math partitions: 1, both warp groups in one (in lock-step at every stage
    # release); 2, one per warp group.
    hopper_math_partitions: int = 1

    def __post_init__(self):
        # one scale group per K block; tl.dot needs every tile side >= 16
        ok = (
            SCALE_BLOCK % self.block_k == 0
            and min(self.block_m, self.block_n, self.block_k) >= 16
            and all(x & (x - 1) == 0 for x in (self.block_m, self.block_n, self.block_k))
        )
        if self.hopper_stages:
            ok = ok and self.hopper_stages >= 2 and self.hopper_math_partitions in (1, 2) and (
                self.block_m, self.block_n, self.block_k, self.num_warps) == (128, 128, 128, 8)
        if not ok:
            raise ValueError(f"invalid Triton tile configuration {self}")

    def persistent(self, programs_per_sm: int) -> "TileConfig":
        """The same tile in a persistent grid of programs_per_sm programs per SM (for tuning)."""
        return replace(self, programs_per_sm=programs_per_sm)


# Why these rows: BLOCK_N = 128 matches one weight-scale block. Up to 64 tokens per expert on average the
# call streams weights and a row tile holds a whole expert: 64 rows are one WGMMA's M, so fewer rows save
# no weight bytes, only tensor-core work that is hidden behind them (benchmarks/triton_sweep.py on an H100,
# decode_uniform8, 8 tokens per expert: 64 x 128 324.6 µs, 32 x 128 331.2, 16 x 128 331.5 (3-6 stages
# 325.6-339.0); an earlier sweep 343.5 against 349.3). Above, 128 x 128 with 8 warps reads each expert's
# weights once per 128 tokens (balanced_big on an H100: 2508.0 µs with 3 stages,
# benchmarks/results/tuning/triton_sweep_fold_H100_2026-12-07c.csv). Scales folded into two accumulators,
# so that the products chain into their dots, were slower (2591.7) and lost bits: the tensor cores add each
# product into the running sum with fewer bits than float32, which promoting each block into float32
# avoids (docs/perf-notes.md).
# The launch order is not in the table: choose_config sets it from k and the size of a (launch_order).
TILE_CONFIGS = (
    TileConfig(max_mean_tokens=64, block_m=64, block_n=128, block_k=128, num_warps=4, num_stages=4),
    TileConfig(max_mean_tokens=float("inf"), block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=3),
)
# The large tile warp-specialized on Hopper (hopper.py), kernel.py's 3 stages elsewhere: correct on an H100
# (tests/test_triton_hopper.py); its K loop in rounds of two blocks not yet timed (fully unrolled, it was 5x
# slower than kernel.py's tile: docs/perf-notes.md), so not in the table.
WARP_SPECIALIZED_TILE = replace(TILE_CONFIGS[1], hopper_stages=4)
# Rows padded to 16 for experts of a few tokens, in the expert-specialized launches below.
DECODE_TILE = TileConfig(max_mean_tokens=16, block_m=16, block_n=128, block_k=128, num_warps=4, num_stages=4)

# The launch order of the chosen tile, from benchmarks/triton_sweep.py on an H100 (docs/perf-notes.md,
# CUDA events, L2 flushed), the 64 x 128 tile unless named:
# - k <= PERSISTENT_MAX_K, a tile of 4 warps (two fit an SM): a persistent grid of 2 programs per SM, one
#   program's K loop running while the other stores its tile (with 2-3 K blocks per tile the epilogue is
#   a large part of it): ds_down_prefill (k = 256) 311.5 against 372.9 µs one program per tile,
#   qwen_down (k = 384) 111.6 against 119.6; at k = 4096 and 7168 2-6 % slower, so not there;
# - else, a larger than ROW_GROUP_MIN_L2_SHARE of the L2: groups of ROW_GROUP_TILES row tiles
#   (kernel._tile_in_order), so a is read from DRAM once rather than once per column tile: ds_gateup_prefill
#   (a 97 MB, 4 column tiles) 391.4 against 501.4, qwen_gateup (24 MB, 6) 169.4 against 203.8,
#   balanced_big (128 x 128 tiles, 235 MB) 2498.5 against 3469.0; where a stays in the L2 (ds_decode_ep8,
#   11 MB; ds_decode_ep16, 4 MB) the grouped order was 6-9 % slower (the experts' weights, all the bytes
#   there are, were then read by fewer experts at a time), so not there.
PERSISTENT_MAX_K = 512
ROW_GROUP_MIN_L2_SHARE = 1 / 3
ROW_GROUP_TILES = 8
DEFAULT_L2_BYTES = 50 * 2**20  # the interpreter's stand-in (an H100's L2)


@dataclass(frozen=True)
class TritonBucket:
    max_rows: float  # experts with (the previous bucket's max_rows) < m <= max_rows
    config: TileConfig


# Expert specialization for the Triton kernel, one launch per bucket: the decode tile for experts of a few
# tokens (rows padded to 16), the 64-row tile in between, 128 x 128 with 8 warps for large experts, whose
# weights are then read once per 128 tokens instead of once per 16. Bounds from the tiles' row padding;
# not yet measured against the mean-based table (benchmarks/triton_sweep.py --buckets), so not the default.
TRITON_BUCKETS = (
    TritonBucket(16, DECODE_TILE),
    TritonBucket(64, TILE_CONFIGS[0]),
    TritonBucket(float("inf"), TILE_CONFIGS[1]),
)
ALL_ROWS = 2**31 - 1  # max_rows of a launch that takes every expert (row counts are int32 in the kernel)


@dataclass(frozen=True)
class TwoKinds:
    """Expert specialization in one persistent launch (plan_two_kinds): experts with more than split_rows
    rows in the large tile, the others in tiles of small_block_m rows with the large tile's columns,
    warps and stages; programs_per_sm programs per SM walk the large tiles first."""
    split_rows: int
    small_block_m: int
    large: TileConfig
    programs_per_sm: int = 1


# Not yet measured (benchmarks/triton_sweep.py --buckets), so not the default.
TRITON_TWO_KINDS = TwoKinds(split_rows=64, small_block_m=16, large=TILE_CONFIGS[1], programs_per_sm=1)


def choose_config(problem: Problem) -> TileConfig:
    """The table's tile for the mean tokens per expert, in the launch order for k and a's size."""
    return launch_order(problem, next(c for c in TILE_CONFIGS if problem.mean_tokens <= c.max_mean_tokens))


def launch_order(problem: Problem, config: TileConfig) -> TileConfig:
    """config with the launch order the rules above give for this problem. A warp-specialized tile that
    runs here (hopper_stages, hopper_tile_reasons none) keeps its own programs per SM (its programs walk
    their tiles in the grouped order either way); where it cannot run, kernel.py's tile gets kernel.py's
    rules."""
    gluon = config.hopper_stages > 0 and not hopper_tile_reasons(problem)
    if not gluon and config.num_warps == 4 and problem.k <= PERSISTENT_MAX_K:
        return replace(config, programs_per_sm=2, row_group=0)
    l2_bytes = device_properties(problem.device).L2_cache_size if problem.device.type == "cuda" else DEFAULT_L2_BYTES
    programs_per_sm = config.programs_per_sm if gluon else 0
    if problem.total_m * problem.k > ROW_GROUP_MIN_L2_SHARE * l2_bytes:
        return replace(config, programs_per_sm=programs_per_sm, row_group=ROW_GROUP_TILES)
    return replace(config, programs_per_sm=programs_per_sm, row_group=0)


def device_facts(device: torch.device) -> tuple[bool, int]:
    """(FP8 tensor cores?, SM count) of the tensors' device; the interpreter computes FP8 dots itself."""
    if device.type != "cuda":
        return True, 1
    return device_capability(device) >= (8, 9), device_properties(device).multi_processor_count


def plan_triton(problem: Problem, *, upcast=None, config=None, buckets=None):
    """The launch of a call of these sizes, ``launch(ptrs, tensors)`` (dispatch.Backend.plan), on
    validated (contiguous) inputs with one offsets dtype: a DirectLaunch of the kernel (a HopperTileLaunch
    for a warp-specialized tile that can run here), or one per bucket.
    ``upcast`` forces (True) or forbids (False) the bf16 path; ``config`` overrides the tile table (for
    tuning); ``buckets`` (e.g. TRITON_BUCKETS) specializes the tile by expert size instead."""
    if buckets is None:
        return _plan_launch(problem, config or choose_config(problem), 0, ALL_ROWS, upcast)
    most_rows = problem.max_m or problem.total_m  # the most rows an expert can have
    launches, previous = [], 0
    for bucket in buckets:
        if most_rows > previous:  # an expert can land in this bucket
            launches.append(_plan_launch(problem, bucket.config, previous, min(bucket.max_rows, ALL_ROWS), upcast))
        previous = bucket.max_rows
    return launches[0] if len(launches) == 1 else LaunchSequence(tuple(launches))


class LaunchSequence:
    """Launches of one call, in order on the current stream (one per bucket)."""

    def __init__(self, launches: tuple):
        self.launches = launches

    def __call__(self, ptrs, tensors) -> None:
        for launch in self.launches:
            launch(ptrs, tensors)


# The arguments of hopper.large_tile_kernel that are kernel.py's too (_shared_constants).
HOPPER_SHARED_CONSTANTS = ("total_m", "n", "num_experts", "max_m", "stride_asm", "stride_ask", "stride_bse",
                           "stride_bsn", "stride_om")


def hopper_tile_reasons(problem: Problem, upcast=None) -> list[str]:
    """Why a warp-specialized tile (hopper.large_tile_kernel) cannot run this problem; none: it can."""
    if problem.device.type != "cuda":
        return [f"runs on CUDA tensors, not {problem.device.type}"]
    reasons = []
    if device_capability(problem.device) != (9, 0):
        reasons.append("needs an sm_90 GPU (WGMMA and TMA)")
    if upcast:
        reasons.append("has no bf16 path")
    if problem.n % SCALE_BLOCK:  # hopper.BLOCK: its tile is one scale block each way
        reasons.append(f"needs n to be a multiple of {SCALE_BLOCK}, got {problem.n}")
    if problem.a_rows:
        reasons.append("does not gather rows (its a tiles are TMA boxes)")
    try:
        from . import hopper  # noqa: F401
    except (ImportError, AttributeError) as exc:  # a Triton without Gluon, or with other Gluon names
        reasons.append(f"needs Triton's Gluon ({exc})")
    return reasons


class HopperTileLaunch:
    """A launch of hopper.large_tile_kernel: its TMA descriptors are made from the tensors on each call."""

    def __init__(self, grid: tuple, constants: dict):
        from .hopper import MATH_WARPS, large_tile_kernel, tile_descriptors

        self.kernel, self.descriptors = large_tile_kernel[grid], tile_descriptors
        self.constants, self.num_warps = constants, MATH_WARPS // constants["MATH_PARTITIONS"]

    def __call__(self, ptrs, tensors) -> None:
        a, a_scale, b, b_scale, offsets, out = tensors()
        self.kernel(*self.descriptors(a, b), a_scale, b_scale, offsets, out, **self.constants,
                    num_warps=self.num_warps)


def _plan_launch(problem: Problem, config: TileConfig, min_rows: int, max_rows: int, upcast):
    """The launch of one tile configuration over the experts with min_rows < m <= max_rows: a DirectLaunch
    of kernel.py's kernel, or a HopperTileLaunch for a warp-specialized tile that can run here."""
    _, sm_count = device_facts(problem.device)
    total_m, n, num_experts = problem.total_m, problem.n, problem.num_experts
    # Row tiles: each of the experts with more than min_rows rows (at most total_m // (min_rows + 1) of
    # them) adds at most one partial tile to cdiv(total_m, BLOCK_M), and has at most cdiv(max_rows, BLOCK_M).
    experts = min(num_experts, total_m // (min_rows + 1))
    row_tiles_bound = min(cdiv(total_m, config.block_m) + experts, experts * cdiv(min(max_rows, total_m), config.block_m))
    col_tiles = cdiv(n, config.block_n)
    persistent = config.programs_per_sm > 0
    if persistent:
        grid = (min(sm_count * config.programs_per_sm, row_tiles_bound * col_tiles),)
    else:
        grid = (row_tiles_bound, col_tiles)
    expert_chunk = _expert_chunk(num_experts)
    if config.hopper_stages and not hopper_tile_reasons(problem, upcast):
        shared = _shared_constants(problem, config, upcast)
        # The same programs in a 1-D grid: each walks its tiles of the m_tiles x n_tiles in launch order.
        return HopperTileLaunch((math.prod(grid),), dict(
            {name: shared[name] for name in HOPPER_SHARED_CONSTANTS}, min_rows=min_rows, max_rows=int(max_rows),
            m_tiles=row_tiles_bound, n_tiles=col_tiles, k_blocks=cdiv(problem.k, SCALE_BLOCK),
            EXPERT_CHUNK=expert_chunk, MASKED=problem.max_m > 0,
            ROW_GROUP=config.row_group, STAGES=config.hopper_stages,
            MATH_PARTITIONS=config.hopper_math_partitions))
    # a gather's row index is a seventh pointer; otherwise the kernel's row_index_ptr is an unused 0
    no_row_index = {} if problem.a_rows else dict(row_index_ptr=0)
    constants = dict(
        **no_row_index, min_rows=min_rows, max_rows=int(max_rows), BLOCK_M=config.block_m, PERSISTENT=persistent,
        ROW_GROUP=0 if persistent else config.row_group,
        RESIDENT_SCHEDULE=persistent and num_experts <= expert_chunk, GATHER=problem.a_rows > 0,
        **_shared_constants(problem, config, upcast),
    )
    return DirectLaunch(grouped_gemm_fp8_kernel, grid, constants,
                        dict(num_warps=config.num_warps, num_stages=config.num_stages), problem.device)


def _expert_chunk(num_experts: int) -> int:
    """Experts the kernel scans per step."""
    return min(max(triton.next_power_of_2(num_experts), 128), 1024)


def _shared_constants(problem: Problem, config: TileConfig, upcast) -> dict:
    """The kernel arguments both kernels take, from the sizes (tensors of the contract: every stride follows
    from them and, for MN-major activation scales, from their leading dimension)."""
    fp8_cores, _ = device_facts(problem.device)
    n, k = problem.n, problem.k
    groups_k, groups_n = cdiv(k, SCALE_BLOCK), cdiv(n, SCALE_BLOCK)
    return dict(
        total_m=problem.total_m, n=n, k=k, num_experts=problem.num_experts, max_m=problem.max_m,
        stride_am=k, stride_asm=1 if problem.a_scale_ld else groups_k, stride_ask=problem.a_scale_ld or 1,
        stride_be=n * k, stride_bn=k, stride_bse=groups_n * groups_k,
        stride_bsn=groups_k, stride_om=n,
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, SCALE_BLOCK=SCALE_BLOCK,
        EXPERT_CHUNK=_expert_chunk(problem.num_experts), EVEN_K=k % config.block_k == 0,
        UPCAST=not fp8_cores if upcast is None else upcast,
        SOFTWARE_BF16_ROUNDING=problem.device.type == "cpu" and problem.out_dtype == torch.bfloat16,
        MASKED=problem.max_m > 0,
    )


def plan_two_kinds(problem: Problem, two: "TwoKinds", upcast=None) -> DirectLaunch:
    """One persistent launch of the two-kind kernel (grouped_gemm_fp8_two_kinds_kernel); every expert must
    fit in one scan chunk (num_experts <= 1024)."""
    if problem.num_experts > _expert_chunk(problem.num_experts):
        raise ValueError(f"two kinds in one launch take at most 1024 experts, got {problem.num_experts}")
    if problem.a_rows:
        raise ValueError("two kinds in one launch gather no rows")
    _, sm_count = device_facts(problem.device)
    large = two.large
    grid = (sm_count * two.programs_per_sm,)  # programs past the tiles stop after the schedule
    constants = dict(split_rows=two.split_rows, BLOCK_M_LARGE=large.block_m, BLOCK_M_SMALL=two.small_block_m,
                     **_shared_constants(problem, large, upcast))
    return DirectLaunch(grouped_gemm_fp8_two_kinds_kernel, grid, constants,
                        dict(num_warps=large.num_warps, num_stages=large.num_stages), problem.device)


def grouped_gemm_triton(problem: Problem, a, a_scale, b, b_scale, expert_offsets, out, *, upcast=None, config=None,
                        buckets=None) -> None:
    """One call on validated inputs (plan_triton says what upcast, config and buckets mean)."""
    tensors = (a, a_scale, b, b_scale, expert_offsets, out)
    plan_triton(problem, upcast=upcast, config=config, buckets=buckets)(tuple(t.data_ptr() for t in tensors),
                                                                        lambda: tensors)

"""The Triton FP8 blockwise grouped GEMM: the readable twin of the CUTLASS backend.

Work is cut into tiles of BLOCK_M rows of one expert by BLOCK_N columns. The host never learns how many
rows each expert has, so the map from tile to (expert, rows) is read off ``expert_offsets`` on the device:

    tiles[e]   = cdiv(offs[e+1] - offs[e], BLOCK_M)         # row tiles of expert e
    expert     = number of experts whose cumulative tile count is <= m_tile
    rows       = offs[expert] + (m_tile - tiles before expert) * BLOCK_M + arange(BLOCK_M)

and one tile computes, with one 128-wide scale group per K step:

    acc = 0
    for kb in range(cdiv(k, 128)):
        partial = a[rows, kb*128:(kb+1)*128] @ b[expert, cols, kb*128:(kb+1)*128].T     # fp32
        acc    += partial * a_scale[rows, kb][:, None] * b_scale[expert, cols // 128, kb][None, :]
                  # (BLOCK_N <= 128: the tile's columns share one weight scale, a scalar folded into a_scale)
    out[rows, cols] = acc.to(out.dtype)            # rows past the expert's end are masked

Two launch shapes (PERSISTENT, a compile-time switch):
- a grid of (cdiv(total_m, BLOCK_M) + E, cdiv(n, BLOCK_N)) programs, an upper bound of the row tiles
  the host can compute; programs past the last real tile do nothing; the programs take their tiles in
  groups of ROW_GROUP row tiles (_tile_in_order), so that a's rows are reused from the L2;
- a persistent grid of about one program per resident slot, each looping over tiles
  (m_tile fastest, so the row tiles of one expert, which share weights, run side by side). With at most
  EXPERT_CHUNK experts (RESIDENT_SCHEDULE) a program reads the experts' row ranges once and locates
  each of its tiles in registers; otherwise each tile is located by the chunked scan.

Rows are only ever read and written inside [offs[e], offs[e+1]) of their own expert, clamped to
[0, total_m), so even offsets that break the contract cannot make the kernel touch memory outside the
tensors. All addresses are computed in 64 bits (E * n * k passes 2^31 easily).

Expert specialization: a launch takes only the experts whose row count m satisfies min_rows < m <= max_rows
(the others get no row tiles in the map above), so one call can run one launch per bucket of experts, each
with the tile shape that fits its experts (launch.TRITON_BUCKETS); a launch with min_rows = 0 and max_rows
>= total_m takes every expert.

The masked layout (MASKED, a compile-time switch) is the same kernel on a seen as (E * max_m, k): expert
e's rows are e * max_m .. e * max_m + masked_m[e] (the count clamped to [0, max_m]); offsets_ptr points to
masked_m, and the rows past an expert's count are neither read into a stored result nor written.

Gathered rows (GATHER, a compile-time switch; Problem.a_rows): row r of an expert reads row row_index[r]
of a and a_scale instead of row r (the MoE layer's first GEMM reads each token's one quantized row for
every expert it is routed to); the output rows are the same.
"""
import triton
import triton.language as tl


@triton.jit
def _round_to_bf16_bits(x):
    """fp32 -> fp32 holding the bf16 value nearest to x (ties to even); NaN passes through.

    The interpreter converts fp32 -> bf16 by truncation while GPUs round to nearest even; rounding here
    first makes the conversion exact, so CPU runs give the GPU's bits.
    """
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))


@triton.jit
def _expert_rows(offsets_ptr, e, in_range, total_m, max_m, MASKED: tl.constexpr):
    """(first row, end row) of expert(s) e in a seen as (total_m, k), clamped to [0, total_m] with end >= first:
    rows offs[e] .. offs[e + 1] (offsets_ptr: the offsets), or, in the masked layout (offsets_ptr: masked_m),
    rows e * max_m .. e * max_m + masked_m[e] with the count clamped to [0, max_m]."""
    if MASKED:
        lo = e * max_m
        count = tl.load(offsets_ptr + e, mask=in_range, other=0).to(tl.int32)
        hi = lo + tl.minimum(tl.maximum(count, 0), max_m)
    else:
        lo = tl.minimum(tl.maximum(tl.load(offsets_ptr + e, mask=in_range, other=0).to(tl.int32), 0), total_m)
        hi = tl.minimum(tl.maximum(tl.load(offsets_ptr + e + 1, mask=in_range, other=0).to(tl.int32), lo), total_m)
    return lo, hi


@triton.jit
def _chunk_rows(offsets_ptr, e_idx, num_experts, total_m, max_m, min_rows, max_rows, BLOCK_M: tl.constexpr,
                MASKED: tl.constexpr):
    """(lo, hi, tiles, in_range) of experts e_idx (a chunk of consecutive ones): their row ranges and row
    tiles, none for experts outside min_rows < m <= max_rows."""
    in_range = e_idx < num_experts
    lo, hi = _expert_rows(offsets_ptr, e_idx, in_range, total_m, max_m, MASKED)
    rows = hi - lo
    tiles = tl.where(in_range & (rows > min_rows) & (rows <= max_rows), tl.cdiv(rows, BLOCK_M), 0)
    return lo, hi, tiles, in_range


@triton.jit
def _find_in_chunk(lo, hi, tiles, tiles_end, in_range, m_tile):
    """For row tile m_tile, one chunk's part of its location, tiles_end being the chunk's inclusive prefix of
    tiles counted from the first expert: (experts of the chunk before the tile's expert, their tiles, the
    first and end row of the tile's expert if it is in this chunk, else 0 and 0)."""
    before = in_range & (tiles_end <= m_tile)  # a prefix: tiles_end never decreases
    owner = (tiles_end > m_tile) & (tiles_end - tiles <= m_tile)  # at most one expert: the tile's
    return (tl.sum(before.to(tl.int32), 0), tl.sum(tl.where(before, tiles, 0), 0),
            tl.sum(tl.where(owner, lo, 0), 0), tl.sum(tl.where(owner, hi, 0), 0))


@triton.jit
def _locate_row_tile(offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, m_tile, BLOCK_M: tl.constexpr,
                     EXPERT_CHUNK: tl.constexpr, MASKED: tl.constexpr):
    """(expert, tiles before it, its first row, its end row, row tiles of all experts) for row tile m_tile:
    a chunked scan of the experts' row ranges (expert = num_experts: the tile is past the last)."""
    return locate_in_chunks(offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, m_tile,
                            tl.arange(0, EXPERT_CHUNK), BLOCK_M, EXPERT_CHUNK, MASKED)


@triton.jit
def locate_in_chunks(offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, m_tile, chunk_index,
                     BLOCK_M: tl.constexpr, EXPERT_CHUNK: tl.constexpr, MASKED: tl.constexpr):
    """_locate_row_tile with the chunk's indices 0 .. EXPERT_CHUNK - 1 given (chunk_index), so that a Gluon
    kernel (hopper.py) can give them in its own layout."""
    expert = 0
    tiles_before = 0
    row_lo = 0
    row_hi = 0
    tiles_total = 0
    for chunk_start in range(0, num_experts, EXPERT_CHUNK):
        lo, hi, tiles, in_range = _chunk_rows(offsets_ptr, chunk_start + chunk_index, num_experts, total_m, max_m,
                                              min_rows, max_rows, BLOCK_M, MASKED)
        tiles_end = tiles_total + tl.cumsum(tiles, 0)
        n_before, t_before, lo_here, hi_here = _find_in_chunk(lo, hi, tiles, tiles_end, in_range, m_tile)
        expert += n_before
        tiles_before += t_before
        row_lo += lo_here
        row_hi += hi_here
        tiles_total += tl.sum(tiles, 0)
    return expert, tiles_before, row_lo, row_hi, tiles_total


@triton.jit
def _tile_in_order(tile, m_tiles, n_tiles, ROW_GROUP: tl.constexpr):
    """(m_tile, n_tile) of the tile-th of m_tiles x n_tiles tiles in launch order. ROW_GROUP = 0: row tiles
    fastest, so the programs running together share a column tile's weights but read all of a again for
    every column tile. ROW_GROUP = G: groups of G row tiles, row tiles fastest within a group, then the
    column tiles: a group's rows of a (G x BLOCK_M x k) stay in the L2 while every column tile's weights
    pass by once, so a is read from DRAM about once and each expert's weights once per group of its row
    tiles (balanced_big with 128 x 128 tiles: 235 MB of a read 32 times row-fastest, about once grouped)."""
    if ROW_GROUP == 0:
        return tile % m_tiles, tile // m_tiles
    per_group = ROW_GROUP * n_tiles
    group = tile // per_group
    first = group * ROW_GROUP
    size = tl.minimum(m_tiles - first, ROW_GROUP)
    local = tile - group * per_group
    return first + local % size, local // size


@triton.jit
def _promote(acc, partial, a_s, b_s, BLOCK_N: tl.constexpr, SCALE_BLOCK: tl.constexpr):
    """acc + partial scaled by its two scales, in float32."""
    if BLOCK_N <= SCALE_BLOCK:  # the tile's columns lie in one weight scale block: one FMA per element
        acc += partial * (a_s * b_s)[:, None]
    else:
        acc += partial * a_s[:, None] * b_s[None, :]
    return acc


@triton.jit
def _add_block(acc, a_ptrs, b_ptrs, a_scale_ptrs, b_scale_ptrs, kb, k, kk, row_ok, col_ok, stride_ask,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALE_BLOCK: tl.constexpr, EVEN_K: tl.constexpr,
               UPCAST: tl.constexpr):
    """acc plus K block kb's FP8 product (a_ptrs, b_ptrs at the block's first column) times the rows'
    activation scales and the block's weight scale(s) (b_scale_ptrs: one pointer when the tile's columns
    lie in one weight scale block, else one per column)."""
    if EVEN_K:  # k % BLOCK_K == 0: no K mask to compute
        a_tile = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        b_tile = tl.load(b_ptrs, mask=col_ok[:, None], other=0.0)
    else:
        k_ok = kk < k - kb * BLOCK_K
        a_tile = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b_tile = tl.load(b_ptrs, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
    if UPCAST:  # no FP8 tensor cores below sm_89; e4m3 -> bf16 is exact
        a_tile = a_tile.to(tl.bfloat16)
        b_tile = b_tile.to(tl.bfloat16)
    scale_group = (kb * BLOCK_K) // SCALE_BLOCK
    a_s = tl.load(a_scale_ptrs + scale_group * stride_ask, mask=row_ok, other=0.0)
    if BLOCK_N <= SCALE_BLOCK:
        b_s = tl.load(b_scale_ptrs + scale_group)
    else:
        b_s = tl.load(b_scale_ptrs + scale_group, mask=col_ok, other=0.0)
    return _promote(acc, tl.dot(a_tile, tl.trans(b_tile)), a_s, b_s, BLOCK_N, SCALE_BLOCK)


@triton.jit
def _gemm_tile(
    a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, row_index_ptr,
    n, k, num_experts,
    stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
    m_tile, n_tile, expert, tiles_before, row_lo, row_hi,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALE_BLOCK: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, SOFTWARE_BF16_ROUNDING: tl.constexpr, GATHER: tl.constexpr,
):
    """Row tile m_tile (of expert `expert`, rows row_lo .. row_hi, tiles_before row tiles of the experts
    before it) by column tile n_tile; nothing when expert = num_experts (a tile past the last). GATHER: row
    r reads row row_index[r] of a and a_scale (rows of the expert only)."""
    if expert < num_experts:
        rows = row_lo + (m_tile - tiles_before) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < row_hi
        col_ok = cols < n
        rows64 = rows.to(tl.int64)
        cols64 = cols.to(tl.int64)
        expert64 = expert.to(tl.int64)
        kk = tl.arange(0, BLOCK_K)

        if GATHER:
            a_rows64 = tl.load(row_index_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        else:
            a_rows64 = rows64
        a_ptrs = a_ptr + a_rows64[:, None] * stride_am + kk[None, :]
        b_ptrs = b_ptr + expert64 * stride_be + cols64[:, None] * stride_bn + kk[None, :]
        a_scale_ptrs = a_scale_ptr + a_rows64 * stride_asm
        if BLOCK_N <= SCALE_BLOCK:  # the tile's columns lie in one weight scale block: one scale per K block
            b_scale_ptrs = b_scale_ptr + expert64 * stride_bse + (n_tile * BLOCK_N // SCALE_BLOCK) * stride_bsn
        else:
            b_scale_ptrs = b_scale_ptr + expert64 * stride_bse + (cols64 // SCALE_BLOCK) * stride_bsn

        # ---- K loop: each K block's FP8 product, then its two scales in float32, in order ----
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k_blocks = tl.cdiv(k, BLOCK_K)
        for kb in range(0, k_blocks):
            acc = _add_block(acc, a_ptrs, b_ptrs, a_scale_ptrs, b_scale_ptrs, kb, k, kk, row_ok, col_ok,
                             stride_ask, BLOCK_N, BLOCK_K, SCALE_BLOCK, EVEN_K, UPCAST)
            a_ptrs += BLOCK_K
            b_ptrs += BLOCK_K

        # ---- epilogue: only this expert's rows, only real columns ----
        if SOFTWARE_BF16_ROUNDING:
            acc = _round_to_bf16_bits(acc)
        out_ptrs = out_ptr + rows64[:, None] * stride_om + cols64[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _resident_tile(
    a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, row_index_ptr, n, k, num_experts,
    stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
    lo, hi, tiles, tiles_end, in_range, tile, m_tiles,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALE_BLOCK: tl.constexpr,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, SOFTWARE_BF16_ROUNDING: tl.constexpr, GATHER: tl.constexpr,
):
    """Tile `tile` (m_tile fastest) of a kind whose schedule (lo, hi, tiles, tiles_end) is in registers."""
    m_tile = tile % m_tiles
    expert, tiles_before, row_lo, row_hi = _find_in_chunk(lo, hi, tiles, tiles_end, in_range, m_tile)
    _gemm_tile(
        a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, row_index_ptr, n, k, num_experts,
        stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
        m_tile, tile // m_tiles, expert, tiles_before, row_lo, row_hi,
        BLOCK_M, BLOCK_N, BLOCK_K, SCALE_BLOCK, EVEN_K, UPCAST, SOFTWARE_BF16_ROUNDING, GATHER,
    )


@triton.jit
def grouped_gemm_fp8_kernel(
    # pointers (row_index_ptr: a gather's (total_m,) row index, GATHER; otherwise unused, passed as 0)
    a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, offsets_ptr, out_ptr, row_index_ptr,
    # sizes (max_m: the masked layout's rows per expert, unused otherwise; min_rows, max_rows: the experts
    # this launch takes, by row count)
    total_m, n, k, num_experts, max_m, min_rows, max_rows,
    # strides, in elements (the innermost stride of every tensor is 1)
    stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALE_BLOCK: tl.constexpr,
    EXPERT_CHUNK: tl.constexpr, PERSISTENT: tl.constexpr, RESIDENT_SCHEDULE: tl.constexpr, EVEN_K: tl.constexpr,
    UPCAST: tl.constexpr, SOFTWARE_BF16_ROUNDING: tl.constexpr, MASKED: tl.constexpr, ROW_GROUP: tl.constexpr,
    GATHER: tl.constexpr,
):
    if PERSISTENT:
        # One program per resident slot loops over the tiles, m_tile fastest. With every expert in one
        # chunk (RESIDENT_SCHEDULE) the experts' rows and tiles are read once and stay in registers; each
        # tile is then located without a load.
        if RESIDENT_SCHEDULE:
            lo, hi, tiles, in_range = _chunk_rows(offsets_ptr, tl.arange(0, EXPERT_CHUNK), num_experts, total_m,
                                                  max_m, min_rows, max_rows, BLOCK_M, MASKED)
            tiles_end = tl.cumsum(tiles, 0)
            m_tiles = tl.sum(tiles, 0)
        else:
            _, _, _, _, m_tiles = _locate_row_tile(offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, 0,
                                                   BLOCK_M, EXPERT_CHUNK, MASKED)
        n_tiles = tl.cdiv(n, BLOCK_N)
        for tile in range(tl.program_id(0), m_tiles * n_tiles, tl.num_programs(0)):
            if RESIDENT_SCHEDULE:
                _resident_tile(
                    a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, row_index_ptr, n, k, num_experts,
                    stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
                    lo, hi, tiles, tiles_end, in_range, tile, m_tiles,
                    BLOCK_M, BLOCK_N, BLOCK_K, SCALE_BLOCK, EVEN_K, UPCAST, SOFTWARE_BF16_ROUNDING, GATHER,
                )
            else:
                m_tile = tile % m_tiles
                expert, tiles_before, row_lo, row_hi, _ = _locate_row_tile(
                    offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, m_tile, BLOCK_M, EXPERT_CHUNK, MASKED)
                _gemm_tile(
                    a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, row_index_ptr, n, k, num_experts,
                    stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
                    m_tile, tile // m_tiles, expert, tiles_before, row_lo, row_hi,
                    BLOCK_M, BLOCK_N, BLOCK_K, SCALE_BLOCK, EVEN_K, UPCAST, SOFTWARE_BF16_ROUNDING, GATHER,
                )
    else:
        m_tile, n_tile = _tile_in_order(tl.program_id(1) * tl.num_programs(0) + tl.program_id(0),
                                        tl.num_programs(0), tl.num_programs(1), ROW_GROUP)
        expert, tiles_before, row_lo, row_hi, _ = _locate_row_tile(
            offsets_ptr, num_experts, total_m, max_m, min_rows, max_rows, m_tile, BLOCK_M, EXPERT_CHUNK, MASKED)
        _gemm_tile(
            a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, row_index_ptr, n, k, num_experts,
            stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
            m_tile, n_tile, expert, tiles_before, row_lo, row_hi,
            BLOCK_M, BLOCK_N, BLOCK_K, SCALE_BLOCK, EVEN_K, UPCAST, SOFTWARE_BF16_ROUNDING, GATHER,
        )


@triton.jit
def grouped_gemm_fp8_two_kinds_kernel(
    # pointers
    a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, offsets_ptr, out_ptr,
    # sizes: experts with more than split_rows rows take the large tile, the others the small one
    total_m, n, k, num_experts, max_m, split_rows,
    # strides, in elements (the innermost stride of every tensor is 1)
    stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
    # meta-parameters (every expert in one scan chunk: num_experts <= EXPERT_CHUNK)
    BLOCK_M_LARGE: tl.constexpr, BLOCK_M_SMALL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SCALE_BLOCK: tl.constexpr, EXPERT_CHUNK: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr,
    SOFTWARE_BF16_ROUNDING: tl.constexpr, MASKED: tl.constexpr,
):
    """Expert specialization in one persistent launch: each program walks the large experts' tiles
    (BLOCK_M_LARGE rows) and then the small experts' tiles (BLOCK_M_SMALL rows), so the short tiles fill
    the tail the long ones leave, within one wave. The schedule of both kinds stays in registers."""
    experts = tl.arange(0, EXPERT_CHUNK)
    lo, hi, tiles_large, in_range = _chunk_rows(offsets_ptr, experts, num_experts, total_m, max_m, split_rows,
                                                2147483647, BLOCK_M_LARGE, MASKED)
    _, _, tiles_small, _ = _chunk_rows(offsets_ptr, experts, num_experts, total_m, max_m, 0, split_rows, BLOCK_M_SMALL,
                                       MASKED)
    end_large = tl.cumsum(tiles_large, 0)
    end_small = tl.cumsum(tiles_small, 0)
    m_large = tl.sum(tiles_large, 0)
    m_small = tl.sum(tiles_small, 0)
    n_tiles = tl.cdiv(n, BLOCK_N)
    large = m_large * n_tiles
    for tile in range(tl.program_id(0), large + m_small * n_tiles, tl.num_programs(0)):
        if tile < large:
            _resident_tile(
                a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, a_ptr, n, k, num_experts,
                stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
                lo, hi, tiles_large, end_large, in_range, tile, m_large,
                BLOCK_M_LARGE, BLOCK_N, BLOCK_K, SCALE_BLOCK, EVEN_K, UPCAST, SOFTWARE_BF16_ROUNDING, False,
            )
        else:
            _resident_tile(
                a_ptr, a_scale_ptr, b_ptr, b_scale_ptr, out_ptr, a_ptr, n, k, num_experts,
                stride_am, stride_asm, stride_ask, stride_be, stride_bn, stride_bse, stride_bsn, stride_om,
                lo, hi, tiles_small, end_small, in_range, tile - large, m_small,
                BLOCK_M_SMALL, BLOCK_N, BLOCK_K, SCALE_BLOCK, EVEN_K, UPCAST, SOFTWARE_BF16_ROUNDING, False,
            )

"""The Triton kernels of the fused MoE layer: everything between and around the two grouped GEMMs.

The layer works on (token, k) pairs: pair p = token * topk + k routes hidden[token] to expert
topk_ids[token, k]. The pairs are laid out grouped by expert, stably: grouped row pair_rows[p] holds pair
p, and rows offs[e]:offs[e+1] belong to expert e. Rows from offs[E] on hold the pairs whose expert id is
out of range; no kernel reads or writes them.

    route:              offs, pair_rows   (one launch up to layer.ROUTE_BY_RANK_PAIRS pairs, two above:
                                           the same ranks per chunk, then placed; see layer.route)
    quantize_scatter:   a[r], a_scale[r]  = quantize(hidden[t])  for r = pair_rows[t * topk + k] < offs[E]
      or, for a first GEMM that gathers its rows (layer.GATHER_FIRST_GEMM),
    quantize_gather:    a[t], a_scale[t]  = quantize(hidden[t]),  row_index[r] = t  for the same r
    silu_mul_quantize:  y[r], y_scale[r]  = quantize(silu(gate_up[r, :I]) * gate_up[r, I:])
    unpermute_sum:      out[t] = sum over k with 0 <= topk_ids[t, k] < E of
                                 topk_weights[t, k] * down[pair_rows[t * topk + k]]
      or, beside a down GEMM that counts its column stripes (layer.STRIPED_DOWN),
    unpermute_stripes:  the same, stripe by stripe as the GEMM completes them

quantize is the per-token-group FP8 quantizer of es_dual.quant, group by group of 128 columns:

    scale = max(amax(|x|), 1e-10) * float32(1 / 448)
    q     = fp8_e4m3(clamp(x / scale, -448, 448))        # round to nearest even

The division is IEEE-rounded (div_rn; Triton's `/` is approximate on GPUs) and the scale a product with
the float32 reciprocal, as es_dual.quant computes it, so the FP8 values and the scales are bit for bit
those of es_dual.quantize_fp8_per_token_group on the same float32 inputs, and
SiLU is x / (1 + exp(-x)), torch's formula, with the same IEEE division.

Work split: a quantizing program takes BLOCK_UNITS units, unit u = (line u // groups, scale group
u % groups), one unit per line of a (BLOCK_UNITS, 128) tile, so the amax of a group is a row reduction;
the lines are tokens for quantize_scatter (each token's row is loaded and quantized once, then stored to
its topk grouped rows) and grouped rows for silu_mul_quantize. A summing program takes BLOCK_T tokens by
BLOCK_H columns.

INTERPRETER (a compile-time flag, set for CPU tensors) replaces what the Triton interpreter gets wrong
or lacks by software: the fp32 -> fp8 and fp32 -> bf16 roundings, libdevice's exp.
"""
import triton
import triton.language as tl

FP8_MAX_RECIPROCAL: tl.constexpr = tl.constexpr(1.0 / 448.0)  # es_dual.quant's; float32 where it multiplies
from triton.language.extra import libdevice

from ..triton_ref.kernel import _round_to_bf16_bits


@triton.jit
def _fp8e4m3_bits(y):
    """Bits (uint8) of the e4m3 value nearest to y (ties to even), for |y| <= 448.

    The interpreter's fp32 -> fp8 conversion does not carry a rounded-up mantissa into the exponent and
    flushes subnormals; computing the bits here gives on the CPU what the GPU's conversion gives.
    """
    sign = ((y.to(tl.uint32, bitcast=True) >> 24) & 0x80).to(tl.uint8)
    mag = tl.abs(y)
    bits = mag.to(tl.uint32, bitcast=True)
    # normal numbers: keep 3 of the 23 mantissa bits, rounding to even (a carry moves into the exponent),
    # then rebias the exponent from 127 to 7
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20) - (120 << 3)
    # below 2^-6, e4m3 steps by 2^-9: adding 2^23 to mag * 2^9 rounds it to an integer, to even; 8 is 2^-6
    subnormal = ((mag * 512.0 + 8388608.0) - 8388608.0).to(tl.uint32)
    return tl.where(mag < 0.015625, subnormal, normal).to(tl.uint8) | sign


@triton.jit
def _unit_tile(rows, num_routed, cols_total, GROUP: tl.constexpr, BLOCK_UNITS: tl.constexpr):
    """This program's BLOCK_UNITS units, unit u = (row u // groups, scale group u % groups), as a tile of
    one unit per line: (row, group, cols (BLOCK_UNITS, GROUP), row_ok, col_ok). The rows are grouped rows
    (those from num_routed on are skipped), or pairs or tokens (num_routed = rows)."""
    groups = tl.cdiv(cols_total, GROUP)
    units = tl.program_id(0) * BLOCK_UNITS + tl.arange(0, BLOCK_UNITS)
    row = units // groups
    group = units % groups
    row_ok = (row < rows) & (row < num_routed)  # rows from offs[E] on hold pairs of no expert
    cols = group[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    col_ok = row_ok[:, None] & (cols < cols_total)
    return row, group, cols, row_ok, col_ok


@triton.jit
def _quantize_groups(x):
    """x (lines, GROUP) float32, one scale group per line: (the values to convert to FP8, clamped to
    +-448, (lines, GROUP); the scales (lines,)), as es_dual.quant computes them."""
    scale = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-10) * FP8_MAX_RECIPROCAL
    return tl.minimum(tl.maximum(tl.math.div_rn(x, scale[:, None]), -448.0), 448.0), scale


@triton.jit
def _silu_mul(gate, up, INTERPRETER: tl.constexpr):
    """SiLU(gate) * up in float32: gate / (1 + exp(-gate)) with the IEEE division, torch's formula."""
    if INTERPRETER:  # numpy's exp; libdevice is not interpreted
        exp = tl.exp(-gate)
    else:  # the CUDA math library's expf, which torch's SiLU computes with (tl.exp is an approximate ex2)
        exp = libdevice.exp(-gate)
    return tl.math.div_rn(gate, 1.0 + exp) * up


@triton.jit
def _fp8_values(y, q_ptr, INTERPRETER: tl.constexpr):
    """y (clamped to +-448) as q_ptr holds it: FP8, or in the interpreter, whose fp32 -> fp8 conversion is
    wrong, the bits computed in software (q_ptr is then a uint8 view)."""
    if INTERPRETER:
        q = _fp8e4m3_bits(y)
    else:
        q = y.to(q_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    return q


@triton.jit
def _store_groups(q, scale, row, group, cols, row_ok, col_ok, q_ptr, stride_q, scale_ptr, stride_scale):
    """Store each unit's values q (BLOCK_UNITS, GROUP), from _fp8_values, and scale into line `row`."""
    row64 = row.to(tl.int64)
    tl.store(q_ptr + row64[:, None] * stride_q + cols, q, mask=col_ok)
    tl.store(scale_ptr + row64 * stride_scale + group, scale, mask=row_ok)


@triton.jit
def _quantize_store(x, row, group, cols, row_ok, col_ok, q_ptr, stride_q, scale_ptr, stride_scale,
                    INTERPRETER: tl.constexpr):
    """Quantize x (BLOCK_UNITS, GROUP) float32, one scale group per line, and store values and scales."""
    y, scale = _quantize_groups(x)
    _store_groups(_fp8_values(y, q_ptr, INTERPRETER), scale, row, group, cols, row_ok, col_ok, q_ptr, stride_q,
                  scale_ptr, stride_scale)


@triton.jit
def quantize_scatter_kernel(
    # pointers
    hidden_ptr, pair_rows_ptr, offsets_ptr, q_ptr, scale_ptr,
    # sizes
    tokens, hidden_size, topk, num_experts,
    # strides, in elements
    stride_hidden, stride_q, stride_scale,
    # meta-parameters
    GROUP: tl.constexpr, BLOCK_UNITS: tl.constexpr, INTERPRETER: tl.constexpr,
):
    """Units (token, scale group): each group of hidden is loaded and quantized once and stored to the
    grouped rows of the token's topk pairs: one load per token instead of one per pair (topk times fewer
    bytes read and quantizations). A pair of no expert has its row from offs[E] on: not written."""
    token, group, cols, token_ok, col_ok = _unit_tile(tokens, tokens, hidden_size, GROUP, BLOCK_UNITS)
    num_routed = tl.load(offsets_ptr + num_experts)

    # ---- load and quantize each group once ----
    x = tl.load(hidden_ptr + token.to(tl.int64)[:, None] * stride_hidden + cols, mask=col_ok, other=0.0)
    y, scale = _quantize_groups(x.to(tl.float32))
    q = _fp8_values(y, q_ptr, INTERPRETER)

    # ---- store it to the grouped row of each of the token's pairs ----
    for k in range(topk):
        row = tl.load(pair_rows_ptr + token * topk + k, mask=token_ok, other=0)
        row_ok = token_ok & (row < num_routed)
        _store_groups(q, scale, row, group, cols, row_ok, col_ok & row_ok[:, None], q_ptr, stride_q, scale_ptr,
                      stride_scale)


@triton.jit
def quantize_gather_kernel(
    # pointers
    hidden_ptr, pair_rows_ptr, offsets_ptr, q_ptr, scale_ptr, row_index_ptr,
    # sizes
    tokens, hidden_size, topk, num_experts,
    # strides, in elements
    stride_hidden, stride_q, stride_scale,
    # meta-parameters
    GROUP: tl.constexpr, BLOCK_UNITS: tl.constexpr, INTERPRETER: tl.constexpr,
):
    """quantize_scatter_kernel for a first GEMM that gathers its rows: each token's row quantized once into
    line `token` of q (tokens lines), and row_index[pair_rows[p]] = token for each of its pairs of an
    expert (written by the units of scale group 0), the row the GEMM reads for grouped row pair_rows[p]."""
    token, group, cols, token_ok, col_ok = _unit_tile(tokens, tokens, hidden_size, GROUP, BLOCK_UNITS)
    num_routed = tl.load(offsets_ptr + num_experts)
    x = tl.load(hidden_ptr + token.to(tl.int64)[:, None] * stride_hidden + cols, mask=col_ok, other=0.0)
    _quantize_store(x.to(tl.float32), token, group, cols, token_ok, col_ok, q_ptr, stride_q, scale_ptr, stride_scale,
                    INTERPRETER)
    first = token_ok & (group == 0)
    for k in range(topk):
        row = tl.load(pair_rows_ptr + token * topk + k, mask=first, other=0)
        tl.store(row_index_ptr + row, token, mask=first & (row < num_routed))


@triton.jit
def silu_mul_quantize_kernel(
    # pointers (stripe_done: the down GEMM's column stripe counters, or an unused 0 when STRIPES_BLOCK is 0)
    gate_up_ptr, offsets_ptr, q_ptr, scale_ptr, stripe_done_ptr,
    # sizes (dead_offset: bytes from gate_up to the DISCARD region of dead_lines 128-byte lines)
    rows, intermediate, num_experts, stripes, dead_offset, dead_lines,
    # strides, in elements
    stride_gate_up, stride_q, stride_scale,
    # meta-parameters (DISCARD, a GPU's only: see below)
    GROUP: tl.constexpr, BLOCK_UNITS: tl.constexpr, STRIPES_BLOCK: tl.constexpr, DISCARD: tl.constexpr,
    DEAD_BLOCK: tl.constexpr, INTERPRETER: tl.constexpr,
):
    """DISCARD: L2 lines that nothing reads again are dropped (discard.global.L2: never written back to
    DRAM): once a program's units are stored, the 128-byte lines of gate_up they read that lie whole in
    their half; and the program's share of dead_lines lines from dead_offset bytes after gate_up (the layer
    puts there the first GEMM's gathered rows, which it loaded evict-last: they would otherwise keep their
    place in the L2 through the down GEMM)."""
    if STRIPES_BLOCK > 0:  # the counters zeroed before the down GEMM, which runs after this kernel, counts
        i = tl.arange(0, STRIPES_BLOCK)
        zeroed = tl.where(tl.program_id(0) == 0, stripes, 0)  # by the first program
        tl.store(stripe_done_ptr + i, tl.zeros((STRIPES_BLOCK,), dtype=tl.int32), mask=i < zeroed)
    row, group, cols, row_ok, col_ok = _unit_tile(
        rows, tl.load(offsets_ptr + num_experts), intermediate, GROUP, BLOCK_UNITS)

    # ---- SiLU(gate) * up in float32: gate is columns [0, I), up is columns [I, 2I) ----
    gate_ptrs = gate_up_ptr + row.to(tl.int64)[:, None] * stride_gate_up + cols
    gate = tl.load(gate_ptrs, mask=col_ok, other=0.0).to(tl.float32)
    up = tl.load(gate_ptrs + intermediate, mask=col_ok, other=0.0).to(tl.float32)
    y = _silu_mul(gate, up, INTERPRETER)

    # ---- quantize ----
    _quantize_store(y, row, group, cols, row_ok, col_ok, q_ptr, stride_q, scale_ptr, stride_scale,
                    INTERPRETER)

    if DISCARD:
        tl.debug_barrier()  # every thread's loads of the units' lines are back
        LINE: tl.constexpr = 64  # bf16 columns
        line_cols = group[:, None] * GROUP + tl.arange(0, GROUP // LINE)[None, :] * LINE
        lines = gate_up_ptr + row.to(tl.int64)[:, None] * stride_gate_up + line_cols
        whole = row_ok[:, None] & (line_cols + LINE <= intermediate)
        _discard_l2_lines(lines, whole)
        _discard_l2_lines(lines + intermediate, whole)
        dead = gate_up_ptr.to(tl.pointer_type(tl.uint8)) + dead_offset
        per_program = tl.cdiv(dead_lines, tl.num_programs(0))
        for start in range(tl.program_id(0) * per_program, (tl.program_id(0) + 1) * per_program, DEAD_BLOCK):
            line = start + tl.arange(0, DEAD_BLOCK)
            _discard_l2_lines(dead + line.to(tl.int64) * 128, line < dead_lines)


@triton.jit
def _discard_l2_lines(ptrs, mask):
    """discard.global.L2 of the 128-byte line at each pointer where mask holds (each pointer 128-byte aligned):
    its contents become undefined and it is never written back. An asm with side effects, which the
    compiler does not move across the memory operations before it."""
    tl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $2, 0; @p discard.global.L2 [$1], 128; mov.b32 $0, 0; }",
                              "=r,l,r", [ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def unpermute_sum_kernel(
    # pointers
    down_ptr, pair_rows_ptr, topk_ids_ptr, topk_weights_ptr, out_ptr,
    # sizes
    tokens, hidden_size, topk, num_experts,
    # strides, in elements
    stride_down, stride_out,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, INTERPRETER: tl.constexpr,
):
    """Program (i, j): tokens i * BLOCK_T ..., columns j * BLOCK_H ...; the k summed in order in float32."""
    _unpermute_sum_tile(down_ptr, pair_rows_ptr, topk_ids_ptr, topk_weights_ptr, out_ptr, tl.program_id(0),
                        tl.program_id(1), tokens, hidden_size, topk, num_experts, stride_down, stride_out,
                        BLOCK_T, BLOCK_H, 0, "", INTERPRETER)


@triton.jit
def unpermute_stripes_kernel(
    # pointers: stripe_done, the down GEMM's counters of stored rows per column stripe (Problem.stripe_cols)
    down_ptr, pair_rows_ptr, topk_ids_ptr, topk_weights_ptr, out_ptr, offsets_ptr, stripe_done_ptr,
    # sizes
    tokens, hidden_size, topk, num_experts,
    # strides, in elements
    stride_down, stride_out,
    # meta-parameters: BLOCK_H, the stripes' width; TOPK = topk; DISCARD (a GPU only): see below
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, TOPK: tl.constexpr, DISCARD: tl.constexpr,
    INTERPRETER: tl.constexpr,
):
    """unpermute_sum_kernel beside the down GEMM that writes `down` column stripe by column stripe and
    counts each stripe's stored rows: the same sums, bit for bit, while the GEMM computes later stripes, so
    that a stripe's rows are read from the L2 soon after they were stored instead of from DRAM after the
    GEMM. A persistent grid (launched as the GEMM's programmatic dependent, on the SMs the GEMM leaves
    free) walks the units (stripe, BLOCK_T tokens), stripe-major: program p takes units p, p + programs,
    ...; before its first unit of a stripe it waits until the stripe's counter reaches the rows of all
    experts (offs[E]), an acquire at GPU scope that the GEMM's releases of its counts synchronize with.
    The GEMM never waits for this kernel, so no order of the two grids' programs deadlocks.
    DISCARD: once a unit's sums are stored, the 128-byte lines of the rows it read are discarded from the
    L2 (discard.global.L2: their contents become undefined and are never written back to DRAM), since
    nothing reads the down rows again: the GEMM's stores of them then cost no DRAM writes either."""
    token_blocks = tl.cdiv(tokens, BLOCK_T)
    units = token_blocks * tl.cdiv(hidden_size, BLOCK_H)
    routed = tl.load(offsets_ptr + num_experts)
    ready = tl.program_id(0) * 0 - 1  # the last stripe this program has seen complete
    for unit in range(tl.program_id(0), units, tl.num_programs(0)):
        stripe = unit // token_blocks
        if stripe > ready:
            while tl.atomic_add(stripe_done_ptr + stripe, 0, sem="acquire", scope="gpu") < routed:
                pass
            ready = stripe
        # (the rows straight from the L2: ".cg" keeps them out of the L1, which nothing here reads twice)
        _unpermute_sum_tile(down_ptr, pair_rows_ptr, topk_ids_ptr, topk_weights_ptr, out_ptr,
                            unit - stripe * token_blocks, stripe, tokens, hidden_size, topk, num_experts,
                            stride_down, stride_out, BLOCK_T, BLOCK_H, TOPK, ".cg", INTERPRETER)
        if DISCARD:
            _discard_down_rows(down_ptr, pair_rows_ptr, topk_ids_ptr, unit - stripe * token_blocks, stripe, tokens,
                               hidden_size, num_experts, stride_down, BLOCK_T, BLOCK_H, TOPK)


@triton.jit
def _discard_down_rows(down_ptr, pair_rows_ptr, topk_ids_ptr, token_block, col_block, tokens, hidden_size,
                       num_experts, stride_down, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, TOPK: tl.constexpr):
    """discard.global.L2 of each 128-byte line (64 bf16 columns) of the rows _unpermute_sum_tile read for
    this tile, once every thread of the program has stored its sums (a barrier: the threads that read a line
    have their loads back), each thread's discards after it (_discard_l2_lines). A line that the tile's
    columns only partly cover (the last stripe's columns past hidden_size) is kept."""
    LINE: tl.constexpr = 64
    tl.debug_barrier()
    token = token_block.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    line_cols = col_block * BLOCK_H + tl.arange(0, BLOCK_H // LINE) * LINE
    whole = (line_cols + LINE) <= hidden_size
    for k in tl.static_range(TOPK):
        pair = token * TOPK + k
        expert = tl.load(topk_ids_ptr + pair, mask=token < tokens, other=-1)
        valid = (token < tokens) & (expert >= 0) & (expert < num_experts)
        row = tl.load(pair_rows_ptr + pair, mask=valid, other=0).to(tl.int64)
        lines = down_ptr + row[:, None] * stride_down + line_cols[None, :]
        _discard_l2_lines(lines, valid[:, None] & whole[None, :])  # (a pair out of range points at row 0: kept)


@triton.jit
def _unpermute_sum_tile(down_ptr, pair_rows_ptr, topk_ids_ptr, topk_weights_ptr, out_ptr, token_block, col_block,
                        tokens, hidden_size, topk, num_experts, stride_down, stride_out, BLOCK_T: tl.constexpr,
                        BLOCK_H: tl.constexpr, TOPK: tl.constexpr, DOWN_CACHE: tl.constexpr, INTERPRETER: tl.constexpr):
    """out of tokens token_block * BLOCK_T ..., columns col_block * BLOCK_H ...: the k summed in order in
    float32, then rounded once. TOPK > 0 (= topk): the k loop unrolled, so that every k's rows are loaded
    at once; 0: a loop over the run-time topk."""
    token = token_block.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = col_block * BLOCK_H + tl.arange(0, BLOCK_H)
    token_ok = token < tokens
    col_ok = cols < hidden_size
    acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    if TOPK > 0:
        for k in tl.static_range(TOPK):
            acc += _weighted_down_rows(down_ptr, pair_rows_ptr, topk_ids_ptr, topk_weights_ptr, token * TOPK + k,
                                       token_ok, cols, col_ok, num_experts, stride_down, DOWN_CACHE)
    else:
        for k in range(topk):
            acc += _weighted_down_rows(down_ptr, pair_rows_ptr, topk_ids_ptr, topk_weights_ptr, token * topk + k,
                                       token_ok, cols, col_ok, num_experts, stride_down, DOWN_CACHE)
    if INTERPRETER:
        acc = _round_to_bf16_bits(acc)
    out_ptrs = out_ptr + token[:, None] * stride_out + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=token_ok[:, None] & col_ok[None, :])


@triton.jit
def _weighted_down_rows(down_ptr, pair_rows_ptr, topk_ids_ptr, topk_weights_ptr, pair, token_ok, cols, col_ok,
                        num_experts, stride_down, DOWN_CACHE: tl.constexpr):
    """topk_weights[pair] * down[pair_rows[pair], cols] in float32 for each token's pair (zero for a pair
    whose expert id is out of range: it contributes nothing)."""
    expert = tl.load(topk_ids_ptr + pair, mask=token_ok, other=-1)
    valid = token_ok & (expert >= 0) & (expert < num_experts)
    row = tl.load(pair_rows_ptr + pair, mask=valid, other=0).to(tl.int64)
    weight = tl.load(topk_weights_ptr + pair, mask=valid, other=0.0)
    down = tl.load(down_ptr + row[:, None] * stride_down + cols[None, :], mask=valid[:, None] & col_ok[None, :],
                   other=0.0, cache_modifier=DOWN_CACHE)
    return weight[:, None] * down.to(tl.float32)


@triton.jit
def _route_keys(ids_ptr, i, base, pairs, num_experts):
    """The sort key bucket * pairs + i of pair base + i of a chunk of `pairs` pairs (bucket: its expert, E
    for an id out of range); lanes past the chunk get a key above every pair's. Unique per pair, so
    ordering the keys is the stable sort."""
    ok = i < pairs
    e = tl.load(ids_ptr + base + i, mask=ok, other=0)
    bucket = tl.where((e >= 0) & (e < num_experts), e, num_experts).to(tl.int32)
    return tl.where(ok, bucket * pairs + i, 2147483647)


@triton.jit
def route_kernel(
    # pointers: offsets (chunks, offsets_stride), pair_rows
    ids_ptr, offsets_ptr, pair_rows_ptr,
    # sizes ((num_experts + 2) * chunk_pairs < 2**31: the keys are int32); each chunk's row of offsets
    # (offsets_count of them: E + 1 for route(), E + 2 for the chunks)
    pairs, num_experts, chunk_pairs, offsets_stride, offsets_count,
    # meta-parameters: queries per program, keys compared per step (powers of 2)
    QUERIES: tl.constexpr, CHUNK: tl.constexpr,
):
    """The pairs of chunk c (program_id(1): pairs c * chunk_pairs on, chunk_pairs of them or the rest)
    sorted stably by expert (ids out of range as expert E), without a sort: each query counts the chunk's
    pair keys below it. A pair's query is its own key, and the count is its place in the chunk: pair_rows.
    Expert e's query is e * pairs, below which lie the keys of the experts before it: offsets[c, e], for
    e < offsets_count (e = E + 1: the chunk's pairs). One chunk (chunk_pairs = pairs) is route(): the
    places are the rows. The first cdiv(chunk_pairs, QUERIES) programs of a chunk take QUERIES pairs each,
    the programs after them QUERIES experts each; every program reads all the chunk's keys, CHUNK at a time
    (chunk_pairs**2 comparisons per chunk, which the SMs share: a few µs for the pairs of a decode step,
    where one program's sort took tens)."""
    pid = tl.program_id(0)
    base = tl.program_id(1).to(tl.int64) * chunk_pairs
    chunk_len = tl.minimum(chunk_pairs, pairs - base).to(tl.int32)  # this chunk's pairs
    pair_programs = tl.cdiv(chunk_pairs, QUERIES)
    is_pair = pid < pair_programs
    index = tl.where(is_pair, pid, pid - pair_programs) * QUERIES + tl.arange(0, QUERIES)
    pairs_here = tl.where(is_pair, chunk_len, 0)  # the queries: pairs below pairs_here, offsets below offsets_here
    offsets_here = tl.where(is_pair, 0, offsets_count)
    query = tl.where(is_pair, _route_keys(ids_ptr, index, base, pairs_here, num_experts), index * chunk_len)
    # counted per (query, key lane), summed once at the end. key < query is the sign bit of key - query
    # (both in [0, 2**31)), added as an unsigned shift: a subtraction and one shift-add per element on the
    # GPU (a compare and a select take four)
    below = tl.zeros((QUERIES, CHUNK), dtype=tl.uint32)
    for start in range(0, chunk_len, CHUNK):
        keys = _route_keys(ids_ptr, start + tl.arange(0, CHUNK), base, chunk_len, num_experts)
        below += (keys[None, :] - query[:, None]).to(tl.uint32, bitcast=True) >> 31
    below = tl.sum(below, axis=1).to(tl.int32)
    tl.store(pair_rows_ptr + base + index, below, mask=index < pairs_here)
    tl.store(offsets_ptr + tl.program_id(1) * offsets_stride + index, below, mask=index < offsets_here)


@triton.jit
def route_place_kernel(
    # pointers: chunk_offsets (chunks, BINS) from route_kernel over chunks
    ids_ptr, chunk_offsets_ptr, offsets_ptr, pair_rows_ptr,
    # sizes
    pairs, num_experts, chunks, chunk_pairs,
    # meta-parameters: BINS > num_experts + 1 (a power of 2), CHUNKS_STEP chunks' offsets per load
    BINS: tl.constexpr, CHUNK: tl.constexpr, CHUNKS_STEP: tl.constexpr,
):
    """The second launch of route() above ROUTE_BY_RANK_PAIRS: chunk c's pairs (CHUNK lanes per program,
    program_id(1) of them per chunk) moved from their places in the chunk to their rows: a pair of
    bucket b goes from chunk_offsets[c, b] + its rank to (the pairs of the buckets below b, of all chunks)
    + (the pairs of b in the chunks before c) + its rank. Offsets from the first program."""
    c = tl.program_id(0)
    bins = tl.arange(0, BINS)
    total = tl.zeros((BINS,), dtype=tl.int32)
    before = tl.zeros((BINS,), dtype=tl.int32)
    for c0 in range(0, chunks, CHUNKS_STEP):  # each chunk's pairs per bucket: its offsets' differences
        cc = c0 + tl.arange(0, CHUNKS_STEP)
        rows = chunk_offsets_ptr + cc[:, None] * BINS + bins[None, :]
        ok = (cc[:, None] < chunks) & (bins[None, :] <= num_experts)
        counts = tl.load(rows + 1, mask=ok, other=0) - tl.load(rows, mask=ok, other=0)
        total += tl.sum(counts, axis=0)
        before += tl.sum(tl.where(cc[:, None] < c, counts, 0), axis=0)
    start = tl.cumsum(total, axis=0) - total
    first = (c == 0) & (tl.program_id(1) == 0)
    tl.store(offsets_ptr + bins, start, mask=bins <= tl.where(first, num_experts, -1))
    shift = start + before - tl.load(chunk_offsets_ptr + c * BINS + bins, mask=bins <= num_experts, other=0)
    i = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    p = c.to(tl.int64) * chunk_pairs + i
    ok = (i < chunk_pairs) & (p < pairs)
    e = tl.load(ids_ptr + p, mask=ok, other=-1)
    bucket = tl.where((e >= 0) & (e < num_experts), e, num_experts).to(tl.int32)
    tl.store(pair_rows_ptr + p, tl.load(pair_rows_ptr + p, mask=ok, other=0) + tl.gather(shift, bucket, axis=0),
             mask=ok)

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
    # pointers
    gate_up_ptr, offsets_ptr, q_ptr, scale_ptr,
    # sizes
    rows, intermediate, num_experts,
    # strides, in elements
    stride_gate_up, stride_q, stride_scale,
    # meta-parameters
    GROUP: tl.constexpr, BLOCK_UNITS: tl.constexpr, INTERPRETER: tl.constexpr,
):
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
    token = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    token_ok = token < tokens
    col_ok = cols < hidden_size
    acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    for k in range(topk):
        pair = token * topk + k
        expert = tl.load(topk_ids_ptr + pair, mask=token_ok, other=-1)
        valid = token_ok & (expert >= 0) & (expert < num_experts)  # a pair out of range contributes nothing
        row = tl.load(pair_rows_ptr + pair, mask=valid, other=0).to(tl.int64)
        weight = tl.load(topk_weights_ptr + pair, mask=valid, other=0.0)
        down = tl.load(down_ptr + row[:, None] * stride_down + cols[None, :], mask=valid[:, None] & col_ok[None, :],
                       other=0.0)
        acc += weight[:, None] * down.to(tl.float32)
    if INTERPRETER:
        acc = _round_to_bf16_bits(acc)
    out_ptrs = out_ptr + token[:, None] * stride_out + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=token_ok[:, None] & col_ok[None, :])


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

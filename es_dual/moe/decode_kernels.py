"""The fused MoE layer's decode path: three Triton kernels on the (token, k) pairs as they come, no routing.

At decode sizes a grouped GEMM's tiles do not cover the SMs (one token on 8 experts: 8 experts x a few
weight tiles), so the weights, which are all the bytes there are, do not stream at full bandwidth. Here
every program reads a slice of one pair's expert weights, and the GEMM over the hidden size is split
along K, so that pairs x weight tiles x K splits programs stream the weights at once:

    gate_up   partial[s, p, :] = sum over the scale groups g of split s of
                                 (w13[e, :, g] @ quantize(hidden[t, g])) * w13_scale[e, :, g] * x_scale[g]
    silu      y[p], y_scale[p] = quantize(silu(gate) * up),   gate_up = bf16(sum over s of partial[s, p])
    down      out[t]           = sum over k of topk_weights[t, k] *
                                 bf16(sum over g of (w2[e, :, g] @ y[p, g]) * w2_scale[e, :, g] * y_scale[p, g])

with p = t * topk + k and e = topk_ids[t, k]; a pair whose id lies outside [0, E) is skipped by every
kernel (its partial sums and y are never written, nor read). quantize is the layer's per-token-group FP8
quantizer (kernels.py), so these are the roundings of the grouped pipeline: the activations and y are the
same FP8 values and scales, gate_up and each pair's down output are rounded to bf16, and only the order of
the float32 sums differs.

Each product is a matrix times one vector: the CUDA cores do it (FP8 -> float32, one multiply-add per
weight byte), which is far more than the weights' bandwidth needs, and a program's weight tile is one
load of several scale groups at once (gate_up: BLOCK_N rows x KG groups; down: BLOCK_N rows x I_CHUNK
columns of every k of the token), so each program has a whole tile's bytes in flight, with no pipeline
to fill. A tile's BLOCK_N rows lie in one 128-row scale block (BLOCK_N divides 128), so a scale group's
weight scale is one number, folded with the activation's into the vector before the multiply.

decode_gate_up_mma_kernel and decode_down_mma_kernel compute the same on the tensor cores (DecodeConfig's
gate_up_tensor_cores, down_tensor_cores_from_pairs): the weights are the M side of the product, the one
activation vector is broadcast to 16 columns of the other operand, one scale group per loop step (one
product, then its two scales), so Triton pipelines the weight loads over num_stages and no instruction
converts FP8 to float32. Their products are exact and summed in the tensor cores' accumulator within a
group (Hopper's FP8 products accumulate with fewer bits than float32's, as in the grouped GEMMs, which
also promote every 128 of K into float32).

With OVERLAP (Hopper and later, the three launched back to back), the SiLU and down kernels are launched
as programmatic dependents (Triton's launch_pdl): each kernel lets the next one launch from its start, and
the next one waits (griddepcontrol.wait: its predecessor complete, its writes visible) before it reads
anything its predecessor writes. The CUDA-core down kernel issues its first weight loads before that
wait, so its weights, which depend on nothing the layer computes, stream while gate_up and SiLU finish
(the tensor-core one waits before its pipelined loop: Triton issues that loop's first loads ahead of the
loop, so they could read y too early if the wait were inside it). gate_up itself is launched as any
kernel: it reads what the kernels before the layer wrote.
"""
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..triton_ref.kernel import _round_to_bf16_bits
from .kernels import _fp8e4m3_bits, _quantize_groups, _quantize_store, _silu_mul, _unit_tile


@triton.jit
def _to_bf16_value(x, INTERPRETER: tl.constexpr):
    """float32 x rounded to bf16 (to nearest even), as float32."""
    if INTERPRETER:
        return _round_to_bf16_bits(x)
    return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _fp8_value(y, fp8_type: tl.constexpr, INTERPRETER: tl.constexpr):
    """float32 y, |y| <= 448, rounded to the nearest e4m3 value (ties to even), as float32."""
    if INTERPRETER:  # its fp32 -> fp8 conversion is wrong: the bits come from software
        return _fp8e4m3_bits(y).to(fp8_type, bitcast=True).to(tl.float32)
    return y.to(fp8_type, fp_downcast_rounding="rtne").to(tl.float32)


@triton.jit
def _gate_up_tile(topk_ids_ptr, w_scale_ptr, topk, num_experts, n, stride_wse, stride_wsn,
                  BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """What program (pair, weight tile, split) of a gate_up kernel works on: (pair, whether its expert is
    in range, expert, token, the tile's columns and which are real, the tile's one scale block of rows
    (BLOCK_N divides GROUP))."""
    pair = tl.program_id(0)
    expert = tl.load(topk_ids_ptr + pair).to(tl.int64)
    in_range = (expert >= 0) & (expert < num_experts)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    w_scale_row = w_scale_ptr + expert * stride_wse + (tl.program_id(1) * BLOCK_N // GROUP) * stride_wsn
    return pair, in_range, expert, (pair // topk).to(tl.int64), cols, cols < n, w_scale_row


@triton.jit
def decode_gate_up_kernel(
    # pointers
    hidden_ptr, topk_ids_ptr, w_ptr, w_scale_ptr, partial_ptr,
    # sizes: n = 2I (the gate rows, then the up rows)
    pairs, hidden_size, n, topk, num_experts,
    # strides, in elements
    stride_hidden, stride_we, stride_wn, stride_wse, stride_wsn, stride_split,
    # meta-parameters: SPLIT_GROUPS scale groups of K per split, KG of them per load
    BLOCK_N: tl.constexpr, GROUP: tl.constexpr, KG: tl.constexpr, SPLIT_GROUPS: tl.constexpr,
    OVERLAP: tl.constexpr, INTERPRETER: tl.constexpr,
):
    """Program (pair, weight tile, split): one K split of the pair's gate_up columns, float32."""
    if OVERLAP:
        gdc_launch_dependents()  # the SiLU kernel may launch once every program has started
    pair, in_range, expert, token, cols, col_ok, w_scale_row = _gate_up_tile(
        topk_ids_ptr, w_scale_ptr, topk, num_experts, n, stride_wse, stride_wsn, BLOCK_N, GROUP)
    if in_range:
        cols64 = cols.to(tl.int64)
        kg = tl.arange(0, KG)
        kk = tl.arange(0, GROUP)
        w_rows = w_ptr + expert * stride_we + cols64[:, None, None] * stride_wn
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        first = tl.program_id(2) * SPLIT_GROUPS
        last = tl.minimum(first + SPLIT_GROUPS, tl.cdiv(hidden_size, GROUP))
        for g0 in range(first, last, KG):
            g = g0 + kg  # (KG,) scale groups of this load
            k = g[:, None] * GROUP + kk[None, :]  # (KG, GROUP) columns
            k_ok = (g[:, None] < last) & (k < hidden_size)
            # ---- the token's activations of these groups, quantized as the layer's quantizer does ----
            x = tl.load(hidden_ptr + token * stride_hidden + k, mask=k_ok, other=0.0).to(tl.float32)
            y, x_scale = _quantize_groups(x)
            a = _fp8_value(y, w_ptr.dtype.element_ty, INTERPRETER)
            # ---- the expert's weight rows of this tile for these groups, scales folded into a ----
            w_scale = tl.load(w_scale_row + g, mask=g < last, other=0.0)
            a = a * (x_scale * w_scale)[:, None]
            w = tl.load(w_rows + k[None, :, :], mask=col_ok[:, None, None] & k_ok[None, :, :], other=0.0)
            acc += tl.sum(tl.sum(w.to(tl.float32) * a[None, :, :], axis=2), axis=1)
        tl.store(partial_ptr + tl.program_id(2) * stride_split + pair * n + cols64, acc, mask=col_ok)


@triton.jit
def decode_gate_up_mma_kernel(
    # pointers
    hidden_ptr, topk_ids_ptr, w_ptr, w_scale_ptr, partial_ptr,
    # sizes: n = 2I (the gate rows, then the up rows)
    pairs, hidden_size, n, topk, num_experts,
    # strides, in elements
    stride_hidden, stride_we, stride_wn, stride_wse, stride_wsn, stride_split,
    # meta-parameters: SPLIT_GROUPS scale groups of K per split, one per loop step
    BLOCK_N: tl.constexpr, GROUP: tl.constexpr, SPLIT_GROUPS: tl.constexpr,
    OVERLAP: tl.constexpr, INTERPRETER: tl.constexpr,
):
    """decode_gate_up_kernel on the tensor cores: per scale group, the tile's (BLOCK_N, GROUP) weights
    (the M side) times the pair's quantized activations broadcast to a (GROUP, 16) operand (every column
    the same, so any column is the product), the group's two scales applied to that column. No FP8 is
    converted to float32 by an instruction, and the loop's weight loads are pipelined over num_stages."""
    if OVERLAP:
        gdc_launch_dependents()  # the SiLU kernel may launch once every program has started
    pair, in_range, expert, token, cols, col_ok, w_scale_row = _gate_up_tile(
        topk_ids_ptr, w_scale_ptr, topk, num_experts, n, stride_wse, stride_wsn, BLOCK_N, GROUP)
    if in_range:
        kk = tl.arange(0, GROUP)
        w_rows = w_ptr + expert * stride_we + cols.to(tl.int64)[:, None] * stride_wn
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        first = tl.program_id(2) * SPLIT_GROUPS
        steps = tl.minimum(SPLIT_GROUPS, tl.cdiv(hidden_size, GROUP) - first)
        # pointers advanced by one group per step (the form Triton's pipeliner takes)
        x_ptrs = hidden_ptr + token * stride_hidden + first * GROUP + kk
        w_ptrs = w_rows + first * GROUP + kk[None, :]
        w_scale_ptr_g = w_scale_row + first
        k_left = hidden_size - first * GROUP
        for _ in range(0, steps):
            k_ok = kk < k_left
            # ---- the token's activations of this group, quantized as the layer's quantizer does ----
            x = tl.load(x_ptrs, mask=k_ok, other=0.0).to(tl.float32)
            y, x_scale = _quantize_groups(x[None, :])  # (1, GROUP), (1,)
            if INTERPRETER:  # its fp32 -> fp8 conversion is wrong: the bits come from software
                a = _fp8e4m3_bits(y).to(w_ptr.dtype.element_ty, bitcast=True)
            else:
                a = y.to(w_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
            a = tl.broadcast_to(tl.trans(a), (GROUP, 16))
            # ---- the expert's weight rows of this tile for this group, on the tensor cores ----
            w = tl.load(w_ptrs, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            product = tl.max(tl.dot(w, a), axis=1)  # the 16 columns are equal
            acc += product * (x_scale * tl.load(w_scale_ptr_g))
            x_ptrs += GROUP
            w_ptrs += GROUP
            w_scale_ptr_g += 1
            k_left -= GROUP
        tl.store(partial_ptr + tl.program_id(2) * stride_split + pair * n + cols.to(tl.int64), acc, mask=col_ok)


@triton.jit
def decode_silu_mul_quantize_kernel(
    # pointers
    partial_ptr, topk_ids_ptr, q_ptr, scale_ptr,
    # sizes
    pairs, intermediate, num_experts, splits,
    # strides, in elements
    stride_split, stride_q, stride_scale,
    # meta-parameters: SPLITS_BLOCK splits summed per load
    GROUP: tl.constexpr, BLOCK_UNITS: tl.constexpr, SPLITS_BLOCK: tl.constexpr, OVERLAP: tl.constexpr,
    INTERPRETER: tl.constexpr,
):
    """Units (pair, scale group of I): gate and up summed over the splits and rounded to bf16, then
    SiLU(gate) * up quantized, as kernels.silu_mul_quantize_kernel does."""
    if OVERLAP:
        gdc_launch_dependents()  # the down kernel may launch and start reading its weights
        gdc_wait()  # gate_up's partial sums complete and visible
    pair, group, cols, row_ok, col_ok = _unit_tile(pairs, pairs, intermediate, GROUP, BLOCK_UNITS)
    expert = tl.load(topk_ids_ptr + pair, mask=row_ok, other=-1)
    row_ok = row_ok & (expert >= 0) & (expert < num_experts)
    col_ok = col_ok & row_ok[:, None]
    split = tl.arange(0, SPLITS_BLOCK)
    gate_ptrs = partial_ptr + pair.to(tl.int64)[:, None, None] * (2 * intermediate) + cols[:, None, :]
    gate = tl.zeros((BLOCK_UNITS, GROUP), dtype=tl.float32)
    up = tl.zeros((BLOCK_UNITS, GROUP), dtype=tl.float32)
    for s0 in range(0, splits, SPLITS_BLOCK):  # SPLITS_BLOCK splits' partial sums per load
        s = s0 + split
        ptrs = gate_ptrs + s.to(tl.int64)[None, :, None] * stride_split
        ok = col_ok[:, None, :] & (s[None, :, None] < splits)
        gate += tl.sum(tl.load(ptrs, mask=ok, other=0.0), axis=1)
        up += tl.sum(tl.load(ptrs + intermediate, mask=ok, other=0.0), axis=1)
    gate = _to_bf16_value(gate, INTERPRETER)
    up = _to_bf16_value(up, INTERPRETER)
    y = _silu_mul(gate, up, INTERPRETER)
    _quantize_store(y, pair, group, cols, row_ok, col_ok, q_ptr, stride_q, scale_ptr, stride_scale, INTERPRETER)


@triton.jit
def _token_pairs(topk_ids_ptr, topk_weights_ptr, topk, num_experts, TOPK_BLOCK: tl.constexpr):
    """(pairs, experts, valid, weights), (TOPK_BLOCK,) each, of this program's token (program_id(0)): a
    pair out of range is not valid, has expert 0 and weight 0, and adds nothing."""
    slots = tl.arange(0, TOPK_BLOCK)
    pairs = tl.program_id(0).to(tl.int64) * topk + slots
    experts = tl.load(topk_ids_ptr + pairs, mask=slots < topk, other=-1).to(tl.int64)
    valid = (slots < topk) & (experts >= 0) & (experts < num_experts)
    experts = tl.where(valid, experts, 0)
    return pairs, experts, valid, tl.load(topk_weights_ptr + pairs, mask=valid, other=0.0)


@triton.jit
def decode_down_kernel(
    # pointers
    y_ptr, y_scale_ptr, topk_ids_ptr, topk_weights_ptr, w_ptr, w_scale_ptr, out_ptr,
    # sizes
    hidden_size, intermediate, topk, num_experts,
    # strides, in elements
    stride_y, stride_ys, stride_we, stride_wn, stride_wse, stride_wsn, stride_out,
    # meta-parameters: TOPK_BLOCK >= topk, a power of 2; I_CHUNK columns of I per load
    BLOCK_N: tl.constexpr, GROUP: tl.constexpr, TOPK_BLOCK: tl.constexpr, I_CHUNK: tl.constexpr,
    OVERLAP: tl.constexpr, INTERPRETER: tl.constexpr,
):
    """Program (token, weight tile): the token's output columns, all its k at once, in float32, I_CHUNK
    columns of I at a time, each chunk's weights loaded before its y (with OVERLAP, the first chunk's before
    the wait for the SiLU kernel; the wait returns at once after the first)."""
    token = tl.program_id(0).to(tl.int64)
    pair, expert, valid, weights = _token_pairs(topk_ids_ptr, topk_weights_ptr, topk, num_experts, TOPK_BLOCK)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < hidden_size
    kk = tl.arange(0, I_CHUNK)
    w_rows = w_ptr + expert[:, None, None] * stride_we + cols.to(tl.int64)[None, :, None] * stride_wn
    # the tile's one scale block of rows (BLOCK_N divides GROUP), per expert
    w_scale_row = w_scale_ptr + expert * stride_wse + (tl.program_id(1) * BLOCK_N // GROUP) * stride_wsn
    rows = tl.zeros((TOPK_BLOCK, BLOCK_N), dtype=tl.float32)
    for i0 in range(0, intermediate, I_CHUNK):
        i = i0 + kk
        ok = valid[:, None] & (i[None, :] < intermediate)  # (TOPK_BLOCK, I_CHUNK)
        w = tl.load(w_rows + i[None, None, :], mask=ok[:, None, :] & col_ok[None, :, None], other=0.0)
        if OVERLAP:
            gdc_wait()  # the SiLU kernel's y complete and visible
        # y of each pair with both scales folded in: one number per (pair, column)
        a = tl.load(y_ptr + pair[:, None] * stride_y + i[None, :], mask=ok, other=0.0).to(tl.float32)
        y_scale = tl.load(y_scale_ptr + pair[:, None] * stride_ys + i[None, :] // GROUP, mask=ok, other=0.0)
        w_scale = tl.load(w_scale_row[:, None] + i[None, :] // GROUP, mask=ok, other=0.0)
        a = a * (y_scale * w_scale)
        rows += tl.sum(w.to(tl.float32) * a[:, None, :], axis=2)
    # each pair's down row rounded to bf16, then weighted and summed over k
    out = tl.sum(weights[:, None] * _to_bf16_value(rows, INTERPRETER), axis=0)
    if INTERPRETER:
        out = _round_to_bf16_bits(out)
    tl.store(out_ptr + token * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def decode_down_mma_kernel(
    # pointers
    y_ptr, y_scale_ptr, topk_ids_ptr, topk_weights_ptr, w_ptr, w_scale_ptr, out_ptr,
    # sizes
    hidden_size, intermediate, topk, num_experts,
    # strides, in elements
    stride_y, stride_ys, stride_we, stride_wn, stride_wse, stride_wsn, stride_out,
    # meta-parameters: TOPK_BLOCK >= topk, a power of 2
    BLOCK_N: tl.constexpr, GROUP: tl.constexpr, TOPK_BLOCK: tl.constexpr,
    OVERLAP: tl.constexpr, INTERPRETER: tl.constexpr,
):
    """decode_down_kernel on the tensor cores: one loop over (k, scale group of I), k by k, each step the
    expert's (BLOCK_N, GROUP) weights (the M side) times the pair's y broadcast to a (GROUP, 16) operand,
    the two scales applied to one column of the product; after a pair's last group its row is rounded to
    bf16, weighted and added. The expert of each step is picked from the token's ids in registers, so
    the weight loads of later steps can be issued ahead (num_stages)."""
    token = tl.program_id(0).to(tl.int64)
    _, experts, valid, weights = _token_pairs(topk_ids_ptr, topk_weights_ptr, topk, num_experts, TOPK_BLOCK)
    slots = tl.arange(0, TOPK_BLOCK)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < hidden_size
    kk = tl.arange(0, GROUP)
    groups = tl.cdiv(intermediate, GROUP)
    row_block = tl.program_id(1) * BLOCK_N // GROUP  # the tile's one scale block of rows (BLOCK_N divides GROUP)
    if OVERLAP:
        gdc_wait()  # the SiLU kernel's y complete and visible
    out = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for step in range(0, topk * groups):
        k = step // groups
        g = step - k * groups
        here = slots == k
        expert = tl.sum(tl.where(here, experts, 0))
        pair_ok = tl.sum(tl.where(here, valid.to(tl.int32), 0)) > 0
        i = g * GROUP + kk
        i_ok = i < tl.where(pair_ok, intermediate, 0)  # no column of a pair out of range
        pair = token * topk + k
        a = tl.load(y_ptr + pair * stride_y + i, mask=i_ok, other=0.0)
        a = tl.broadcast_to(tl.reshape(a, (GROUP, 1)), (GROUP, 16))
        w = tl.load(w_ptr + expert * stride_we + cols.to(tl.int64)[:, None] * stride_wn + i[None, :],
                    mask=col_ok[:, None] & i_ok[None, :], other=0.0)
        product = tl.max(tl.dot(w, a), axis=1)  # the 16 columns are equal
        scale = (tl.load(y_scale_ptr + pair * stride_ys + g, mask=pair_ok, other=0.0)
                 * tl.load(w_scale_ptr + expert * stride_wse + row_block * stride_wsn + g, mask=pair_ok, other=0.0))
        row += product * scale
        # after the pair's last group: its down row, rounded to bf16, weighted and summed in k order
        done = g == groups - 1
        out += tl.where(done, tl.sum(tl.where(here, weights, 0.0)) * _to_bf16_value(row, INTERPRETER), 0.0)
        row = tl.where(done, 0.0, row)
    if INTERPRETER:
        out = _round_to_bf16_bits(out)
    tl.store(out_ptr + token * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=col_ok)

"""The fused MoE layer's decode path: three Triton kernels on the (token, k) pairs as they come, no routing.

At decode sizes a grouped GEMM's tiles do not cover the SMs (one token on 8 experts: 8 experts x a few
weight tiles), so the weights, which are all the bytes there are, do not stream at full bandwidth. Here
every program reads a slice of one pair's expert weights, and the GEMM over the hidden size is split
along K, so that pairs x weight tiles x K splits programs stream the weights at once:

    gate_up   partial[s, p, :] = sum over the scale groups g of split s of
                                 (w13[e, :, g] @ quantize(hidden[t, g])) * w13_scale[e, :, g] * x_scale[g]
    silu      y[p], y_scale[p] = quantize(silu(gate) * up),   gate_up = bf16(sum over s of partial[s, p])
    down      out[t]           = sum over k, in order, of topk_weights[t, k] *
                                 bf16(sum over g of (w2[e, :, g] @ y[p, g]) * w2_scale[e, :, g] * y_scale[p, g])

with p = t * topk + k and e = topk_ids[t, k]; a pair whose id lies outside [0, E) is skipped by every
kernel (its partial sums and y are never written, nor read). quantize is the layer's per-token-group FP8
quantizer (kernels.py), so these are the roundings of the grouped pipeline: the activations and y are the
same FP8 values and scales, gate_up and each pair's down output are rounded to bf16, and only the order of
the float32 sums over K differs.

A pair's activations are one row; tl.dot needs 16, so the row is the first line of a 16-line tile whose
other lines are zeros, and the product's first column is the pair's (the tensor cores have time to spare:
the weights' bytes bound these kernels).

The down kernel's program (token, weight tile) loops over the token's k and the scale groups in one loop,
so the loads of all its experts' weight slices are pipelined together.
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ..triton_ref.kernel import _round_to_bf16_bits
from .kernels import FP8_MAX_RECIPROCAL, _fp8e4m3_bits, _quantize_store, _unit_tile

LINES: tl.constexpr = tl.constexpr(16)  # lines of an activation tile: the smallest tl.dot operand side


@triton.jit
def _to_bf16_value(x, INTERPRETER: tl.constexpr):
    """float32 x rounded to bf16 (to nearest even), as float32."""
    if INTERPRETER:
        return _round_to_bf16_bits(x)
    return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _first_column(product):
    """(BLOCK_N,) column 0 of a (BLOCK_N, LINES) product: the pair's, the other lines being zeros."""
    line = tl.arange(0, LINES)
    return tl.sum(tl.where(line[None, :] == 0, product, 0.0), axis=1)


@triton.jit
def _dot_first_line(w, a, UPCAST: tl.constexpr):
    """w (BLOCK_N, GROUP) FP8 times the first line of a (LINES, GROUP) FP8 tile: (BLOCK_N,) float32."""
    if UPCAST:  # no FP8 tensor cores below sm_89; e4m3 -> bf16 is exact
        w = w.to(tl.bfloat16)
        a = a.to(tl.bfloat16)
    return _first_column(tl.dot(w, tl.trans(a)))


@triton.jit
def decode_gate_up_kernel(
    # pointers
    hidden_ptr, topk_ids_ptr, w_ptr, w_scale_ptr, partial_ptr,
    # sizes: n = 2I (the gate rows, then the up rows)
    pairs, hidden_size, n, topk, num_experts,
    # strides, in elements
    stride_hidden, stride_we, stride_wn, stride_wse, stride_wsn, stride_split,
    # meta-parameters: SPLIT_GROUPS scale groups of K per split
    BLOCK_N: tl.constexpr, GROUP: tl.constexpr, SPLIT_GROUPS: tl.constexpr, UPCAST: tl.constexpr,
    INTERPRETER: tl.constexpr,
):
    """Program (pair, weight tile, split): one K split of the pair's gate_up columns, float32."""
    pair = tl.program_id(0)
    expert = tl.load(topk_ids_ptr + pair).to(tl.int64)
    if (expert >= 0) & (expert < num_experts):
        token = (pair // topk).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < n
        cols64 = cols.to(tl.int64)
        kk = tl.arange(0, GROUP)
        line = tl.arange(0, LINES)
        w_ptrs = w_ptr + expert * stride_we + cols64[:, None] * stride_wn + kk[None, :]
        w_scale_ptrs = w_scale_ptr + expert * stride_wse + (cols64 // GROUP) * stride_wsn
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        first = tl.program_id(2) * SPLIT_GROUPS
        for g in range(first, tl.minimum(first + SPLIT_GROUPS, tl.cdiv(hidden_size, GROUP))):
            k_ok = g * GROUP + kk < hidden_size
            # ---- the token's activations of group g, quantized as the layer's quantizer does ----
            x = tl.load(hidden_ptr + token * stride_hidden + g * GROUP + line[:, None] * 0 + kk[None, :],
                        mask=(line[:, None] == 0) & k_ok[None, :], other=0.0).to(tl.float32)
            x_scale = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-10) * FP8_MAX_RECIPROCAL
            y = tl.minimum(tl.maximum(tl.math.div_rn(x, x_scale), -448.0), 448.0)
            if INTERPRETER:  # its fp32 -> fp8 conversion is wrong: the bits come from software
                a = _fp8e4m3_bits(y).to(w_ptr.dtype.element_ty, bitcast=True)
            else:
                a = y.to(w_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
            # ---- the expert's weight rows of this tile, group g ----
            w = tl.load(w_ptrs + g * GROUP, mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            w_scale = tl.load(w_scale_ptrs + g, mask=col_ok, other=0.0)
            acc += _dot_first_line(w, a, UPCAST) * w_scale * x_scale
        tl.store(partial_ptr + tl.program_id(2) * stride_split + pair * n + cols64, acc, mask=col_ok)


@triton.jit
def decode_silu_mul_quantize_kernel(
    # pointers
    partial_ptr, topk_ids_ptr, q_ptr, scale_ptr,
    # sizes
    pairs, intermediate, num_experts, splits,
    # strides, in elements
    stride_split, stride_q, stride_scale,
    # meta-parameters
    GROUP: tl.constexpr, BLOCK_UNITS: tl.constexpr, INTERPRETER: tl.constexpr,
):
    """Units (pair, scale group of I): gate and up summed over the splits and rounded to bf16, then
    SiLU(gate) * up quantized, as kernels.silu_mul_quantize_kernel does."""
    pair, group, cols, row_ok, col_ok = _unit_tile(pairs, pairs, intermediate, GROUP, BLOCK_UNITS)
    expert = tl.load(topk_ids_ptr + pair, mask=row_ok, other=-1)
    row_ok = row_ok & (expert >= 0) & (expert < num_experts)
    col_ok = col_ok & row_ok[:, None]
    gate_ptrs = partial_ptr + pair.to(tl.int64)[:, None] * (2 * intermediate) + cols
    gate = tl.zeros((BLOCK_UNITS, GROUP), dtype=tl.float32)
    up = tl.zeros((BLOCK_UNITS, GROUP), dtype=tl.float32)
    for s in range(splits):
        gate += tl.load(gate_ptrs + s * stride_split, mask=col_ok, other=0.0)
        up += tl.load(gate_ptrs + s * stride_split + intermediate, mask=col_ok, other=0.0)
    gate = _to_bf16_value(gate, INTERPRETER)
    up = _to_bf16_value(up, INTERPRETER)
    if INTERPRETER:  # numpy's exp; libdevice is not interpreted
        exp = tl.exp(-gate)
    else:  # the CUDA math library's expf, as kernels.silu_mul_quantize_kernel
        exp = libdevice.exp(-gate)
    y = tl.math.div_rn(gate, 1.0 + exp) * up
    _quantize_store(y, pair, group, cols, row_ok, col_ok, q_ptr, stride_q, scale_ptr, stride_scale, INTERPRETER)


@triton.jit
def decode_down_kernel(
    # pointers
    y_ptr, y_scale_ptr, topk_ids_ptr, topk_weights_ptr, w_ptr, w_scale_ptr, out_ptr,
    # sizes
    hidden_size, intermediate, topk, num_experts,
    # strides, in elements
    stride_y, stride_ys, stride_we, stride_wn, stride_wse, stride_wsn, stride_out,
    # meta-parameters: TOPK_BLOCK >= topk, a power of 2
    BLOCK_N: tl.constexpr, GROUP: tl.constexpr, TOPK_BLOCK: tl.constexpr, UPCAST: tl.constexpr,
    INTERPRETER: tl.constexpr,
):
    """Program (token, weight tile): the token's output columns, its k summed in order in float32."""
    token = tl.program_id(0).to(tl.int64)
    # The token's ids and weights, read once: inside the loop an expert's address then comes from
    # registers, not from a load, so the loop's weight loads pipeline as deep as its stages allow.
    slots = tl.arange(0, TOPK_BLOCK)
    ids = tl.load(topk_ids_ptr + token * topk + slots, mask=slots < topk, other=-1).to(tl.int64)
    weights = tl.load(topk_weights_ptr + token * topk + slots, mask=slots < topk, other=0.0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols64 = cols.to(tl.int64)
    kk = tl.arange(0, GROUP)
    line = tl.arange(0, LINES)
    groups = tl.cdiv(intermediate, GROUP)
    out = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    # one loop over (k, group), so that the loads of every expert's slices are pipelined together
    for step in range(topk * groups):
        k = step // groups
        g = step % groups
        pair = token * topk + k
        expert = tl.sum(tl.where(slots == k, ids, 0), 0)
        valid = (expert >= 0) & (expert < num_experts)  # a pair out of range contributes nothing:
        expert = tl.where(valid, expert, 0)
        k_ok = g * GROUP + kk < tl.where(valid, intermediate, 0)  # its loads have empty bounds
        col_ok = cols < tl.where(valid, hidden_size, 0)
        a = tl.load(y_ptr + pair * stride_y + g * GROUP + line[:, None] * 0 + kk[None, :],
                    mask=(line[:, None] == 0) & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + expert * stride_we + cols64[:, None] * stride_wn + g * GROUP + kk[None, :],
                    mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        w_scale = tl.load(w_scale_ptr + expert * stride_wse + (cols64 // GROUP) * stride_wsn + g,
                          mask=col_ok, other=0.0)
        y_scale = tl.load(y_scale_ptr + pair * stride_ys + g, mask=valid, other=0.0)
        acc += _dot_first_line(w, a, UPCAST) * w_scale * y_scale
        # after the pair's last group its down row is complete: rounded to bf16, weighted, added
        last = g == groups - 1
        weight = tl.where(valid & last, tl.sum(tl.where(slots == k, weights, 0.0), 0), 0.0)
        out += tl.where(last, weight * _to_bf16_value(acc, INTERPRETER), 0.0)
        acc = tl.where(last, 0.0, acc)
    if INTERPRETER:
        out = _round_to_bf16_bits(out)
    tl.store(out_ptr + token * stride_out + cols64, out.to(out_ptr.dtype.element_ty), mask=cols < hidden_size)

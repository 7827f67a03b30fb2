"""Plain torch references of the MoE expert block: a loop over experts, routing read on the host.

- ``fused_moe_fp8_reference`` mirrors every rounding step of es_dual.moe.fused_moe_fp8 (hidden quantized
  per token group, float32 products of dequantized values rounded to bf16 where the GEMMs write bf16,
  SiLU * up in float32 then quantized, the float32 weighted sum over k in order, bf16 at the end), so
  the fused layer can be held to a tight tolerance: what differs is the summation order inside the
  products and the last bit of SiLU's exp.
- ``moe_float_reference`` is the unquantized layer in float64, for the end-to-end accuracy check.

Both give a pair whose expert id is out of range no contribution and compute a token that names one
expert twice as two pairs, as the fused layer does.
"""
from __future__ import annotations

import torch

from ..quant import dequantize_per_block, dequantize_per_token_group, quantize_fp8_per_token_group
from ..reference import _matmul_fp32

# Allowed (max, rms) relative error (es_dual.accuracy.relative_errors) of fused_moe_fp8 against
# fused_moe_fp8_reference. The reference repeats every rounding of the layer; what differs is the order in
# which the grouped GEMMs sum their float32 products, and the last bit of SiLU's exp (torch's against
# libdevice's or numpy's).
# - LAYER_TOLERANCE: GEMMs that sum in the reference's order (the Triton interpreter on the CPU). Only
#   SiLU's last bit differs: now and then a bf16 value moves to its other neighbour (2^-8 relative) and,
#   rarely, an intermediate to the next FP8 step. RMS within 2^-7, max within 2^-5 of max |ref|.
# - LAYER_TOLERANCE_GPU: GEMMs that sum in their own order (every GPU kernel). A gate-up output then
#   differs from the reference's by up to one bf16 step (2^-7 of its leading power of two), which moves
#   its SiLU*up product across an FP8 rounding boundary (steps of 2^-3) with probability ~ 2^-7 / 2^-3 =
#   1/16; each such intermediate moves by one FP8 step, 6-12 % of itself. Over a down product of I terms
#   that is ~ sqrt(1/16) * 9 % ~ 2-3 % RMS (measured on an H200: 1.4-3.2 %, the most with one token,
#   whose outputs all share the same intermediates): allowed RMS 2^-4 and max 2^-3 of max |ref|.
# A row routed to a wrong expert, a wrong weight or a wrong scale is of order 100 % either way, and the
# end-to-end similarity to the unquantized layer (tests/test_moe.py) holds the GPU path tightly.
LAYER_TOLERANCE = (2.0**-5, 2.0**-7)
LAYER_TOLERANCE_GPU = (2.0**-3, 2.0**-4)


def layer_tolerance(device) -> tuple[float, float]:
    """The (max, rms) tolerance of the fused layer against fused_moe_fp8_reference on `device`."""
    return LAYER_TOLERANCE_GPU if torch.device(device).type == "cuda" else LAYER_TOLERANCE


def _fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """x quantized per token and 128 columns, dequantized again (float32)."""
    return dequantize_per_token_group(*quantize_fp8_per_token_group(x))


def _moe(x, w13_of, w2_of, num_experts, topk_weights, topk_ids, quantized: bool) -> torch.Tensor:
    """The expert loop on float activations x (T, H); w13_of(e) and w2_of(e) give expert e's float weights."""
    tokens, topk = topk_ids.shape
    per_pair = torch.zeros(tokens, topk, x.shape[1], dtype=x.dtype, device=x.device)
    for e in sorted(set(topk_ids.flatten().tolist())):
        if not 0 <= e < num_experts:
            continue
        token, slot = (topk_ids == e).nonzero(as_tuple=True)
        gate_up = _matmul_fp32(x[token], w13_of(e).T)
        if quantized:
            gate_up = gate_up.to(torch.bfloat16).float()  # the grouped GEMM writes bf16
        gate, up = gate_up.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
        if quantized:
            y = _fake_quantize(y)
        down = _matmul_fp32(y, w2_of(e).T)
        per_pair[token, slot] = down.to(torch.bfloat16).float() if quantized else down
    valid = (topk_ids >= 0) & (topk_ids < num_experts)
    weights = torch.where(valid, topk_weights.to(x.dtype), 0)
    out = torch.zeros(tokens, x.shape[1], dtype=x.dtype, device=x.device)
    for k in range(topk):  # the fused kernel's order: k = 0, 1, ... in float32
        out = out + weights[:, k, None] * per_pair[:, k]
    return out


def fused_moe_fp8_reference(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids) -> torch.Tensor:
    """es_dual.moe.fused_moe_fp8 in plain torch (float32 on dequantized values); returns (T, H) bf16."""
    return _moe(
        _fake_quantize(hidden),
        lambda e: dequantize_per_block(w13[e], w13_scale[e]),
        lambda e: dequantize_per_block(w2[e], w2_scale[e]),
        w13.shape[0], topk_weights, topk_ids, quantized=True,
    ).to(torch.bfloat16)


def moe_float_reference(hidden, w13, w2, topk_weights, topk_ids) -> torch.Tensor:
    """The unquantized layer in float64: w13 (E, 2I, H) and w2 (E, H, I) in any float dtype; (T, H) float64."""
    return _moe(
        hidden.double(), lambda e: w13[e].double(), lambda e: w2[e].double(),
        w13.shape[0], topk_weights, topk_ids, quantized=False,
    )

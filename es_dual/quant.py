"""FP8 (e4m3) quantizers producing the scale layouts of the tensor contract.

- activations: one scale per token and per group of 128 along K ("1x128"),
- weights: one scale per 128x128 block ("128x128").

scale = amax / 448 (the largest finite e4m3 value), so the largest element of a group maps to +-448.
The amax is floored at ``AMAX_FLOOR`` so an all-zero group gets a finite, positive scale and quantizes
to zeros instead of 0/0. The division by 448 is a multiplication by the float32 reciprocal: torch
turns a division by a scalar into exactly that on GPUs (but not on CPUs), so writing it as a product
makes the scales the same bits on every device and in the fused Triton quantizers.
"""
from __future__ import annotations

import torch

from .problem import FP8, cdiv

FP8_MAX = 448.0
FP8_MAX_RECIPROCAL = 1.0 / FP8_MAX  # rounded to float32 where it multiplies a float32 amax
AMAX_FLOOR = 1e-10


def _pad_last_dims(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad the trailing len(sizes) dimensions of x up to the given sizes."""
    pad = []
    for dim, size in zip(reversed(range(x.dim())), reversed(sizes)):
        pad += [0, size - x.shape[dim]]
    return torch.nn.functional.pad(x, pad) if any(pad) else x


def _quantize(x: torch.Tensor, amax: torch.Tensor, expand) -> tuple[torch.Tensor, torch.Tensor]:
    scale = amax.float().clamp(min=AMAX_FLOOR) * FP8_MAX_RECIPROCAL
    q = (x.float() / expand(scale)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def quantize_fp8_per_token_group(x: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations ``x`` (m, k) to FP8 with one float32 scale per token and group of K.

    Returns ``(x_fp8, scale)`` of shapes (m, k) and (m, ceil(k / group_size)); x ~= x_fp8 * scale
    repeated group_size times along K. The grouped GEMM expects group_size = 128.
    """
    if x.dim() != 2:
        raise ValueError(f"x: expected 2 dimensions (m, k), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"x: expected dtype bfloat16, float16 or float32, got {x.dtype}")
    m, k = x.shape
    groups = cdiv(k, group_size)
    grouped = _pad_last_dims(x, (m, groups * group_size)).view(m, groups, group_size)
    amax = grouped.abs().amax(dim=-1)
    q, scale = _quantize(grouped, amax, lambda s: s.unsqueeze(-1))
    return q.view(m, groups * group_size)[:, :k].contiguous(), scale


def quantize_fp8_per_block(w: torch.Tensor, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize weights ``w`` (..., n, k) to FP8 with one float32 scale per block_size^2 block.

    Returns ``(w_fp8, scale)`` of shapes (..., n, k) and (..., ceil(n / bs), ceil(k / bs)).
    The grouped GEMM expects block_size = 128.
    """
    if w.dim() < 2:
        raise ValueError(f"w: expected at least 2 dimensions (..., n, k), got shape {tuple(w.shape)}")
    if w.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"w: expected dtype bfloat16, float16 or float32, got {w.dtype}")
    *lead, n, k = w.shape
    nb, kb = cdiv(n, block_size), cdiv(k, block_size)
    blocks = _pad_last_dims(w, (nb * block_size, kb * block_size)).view(*lead, nb, block_size, kb, block_size)
    amax = blocks.abs().amax(dim=(-3, -1))
    q, scale = _quantize(blocks, amax, lambda s: s[..., :, None, :, None])
    return q.view(*lead, nb * block_size, kb * block_size)[..., :n, :k].contiguous(), scale


def dequantize_per_token_group(x_fp8: torch.Tensor, scale: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """float32 x_fp8 * scale, the scale repeated group_size times along K (inverse of the quantizer)."""
    k = x_fp8.shape[-1]
    return x_fp8.float() * scale.repeat_interleave(group_size, dim=-1)[..., :k]


def dequantize_per_block(w_fp8: torch.Tensor, scale: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    """float32 w_fp8 * scale, each scale covering its block_size x block_size block."""
    n, k = w_fp8.shape[-2:]
    full = scale.repeat_interleave(block_size, dim=-2)[..., :n, :].repeat_interleave(block_size, dim=-1)[..., :k]
    return w_fp8.float() * full

"""sgl-kernel's expert-specialization grouped GEMM, call-compatible: SGLang's CUTLASS MoE path calls

    es_fp8_blockwise_scaled_grouped_mm(output, a, b, scales_a, scales_b, stride_a, stride_b, stride_d,
                                       problem_sizes, expert_offsets, workspace)

and switches to es_dual by importing this function instead of sgl_kernel's. The layouts are sgl-kernel's:

    output         (total_m, n)            bfloat16 or float16, written
    a              (total_m, k)            float8_e4m3fn, row-major, rows grouped by expert
    b              (E, k, n)               float8_e4m3fn, column-major: the transpose of a contiguous (E, n, k)
    scales_a       (total_m, ceil(k/128))  float32, K-major
    scales_b       (E, ceil(k/128), ceil(n/128))  float32: the transpose of a contiguous (E, n/128, k/128)
    stride_a/b/d   (E,) int64              row strides of a, b and output per expert
    problem_sizes  (E, 3) int32            (m, n, k) per expert
    expert_offsets (E,) int32              the first row of each expert
    workspace      uint8                   scratch of the caller's

Both views of b are es_dual's own contiguous (E, n, k) weights and (E, n/128, k/128) scales, so nothing is
copied. es_dual reads each expert's rows from the offsets: expert e has rows expert_offsets[e] ..
expert_offsets[e + 1] (the last one problem_sizes[E - 1, 0] rows), which is what problem_sizes says whenever
the two agree, as they do for SGLang's callers; n and k come from the tensors' shapes. The stride arrays and
the workspace are not needed (es_dual's tensors are contiguous by contract and its workspace its own), so
they are not read. No host synchronization: the offsets' end is computed on the device.
"""
from __future__ import annotations

import torch

from ..api import grouped_gemm_fp8


def _transposed_contiguous(name: str, t, shape: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 3:
        raise ValueError(f"{name}: expected a 3-dimensional tensor {shape}, got "
                         f"{type(t).__name__ if not isinstance(t, torch.Tensor) else tuple(t.shape)}")
    inner = t.transpose(1, 2)
    if not inner.is_contiguous():
        raise ValueError(f"{name}: expected {shape} as the transpose of a contiguous tensor (column-major, "
                         f"as sgl-kernel takes it), got strides {tuple(t.stride())}")
    return inner


def es_fp8_blockwise_scaled_grouped_mm(output, a, b, scales_a, scales_b, stride_a, stride_b, stride_d,
                                       problem_sizes, expert_offsets, workspace) -> None:
    """output[rows of e] = (dequant(a[rows]) @ dequant(b[e])).to(output.dtype) for every expert e, with
    sgl-kernel's arguments (module docstring); errors name the argument, as es_dual's do."""
    weights = _transposed_contiguous("b", b, "(E, k, n)")
    weight_scales = _transposed_contiguous("scales_b", scales_b, "(E, ceil(k/128), ceil(n/128))")
    for name, t in (("problem_sizes", problem_sizes), ("expert_offsets", expert_offsets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    num_experts = weights.shape[0]
    if tuple(problem_sizes.shape) != (num_experts, 3):
        raise ValueError(f"problem_sizes: expected shape ({num_experts}, 3), got {tuple(problem_sizes.shape)}")
    if tuple(expert_offsets.shape) != (num_experts,):
        raise ValueError(f"expert_offsets: expected shape ({num_experts},) (each expert's first row), "
                         f"got {tuple(expert_offsets.shape)}")
    end = expert_offsets[-1:] + problem_sizes[-1:, 0].to(expert_offsets.dtype)
    offsets = torch.cat((expert_offsets, end))
    grouped_gemm_fp8(a, scales_a, weights, weight_scales, offsets, out=output)

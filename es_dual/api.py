"""The public entry point: check -> choose backend -> allocate -> launch, one linear path."""
from __future__ import annotations

import torch

from .dispatch import select_backend
from .problem import check_inputs


def grouped_gemm_fp8(
    a, a_scale, b, b_scale, expert_offsets, *, out=None, out_dtype=torch.bfloat16, backend="auto"
) -> torch.Tensor:
    """FP8 blockwise-scaled grouped GEMM for Mixture-of-Experts.

    For every expert e, with rows = offs[e]:offs[e+1]::

        out[rows] = (dequant(a[rows], a_scale[rows]) @ dequant(b[e], b_scale[e]).T).to(out_dtype)

    Args:
        a: (total_m, k) float8_e4m3fn, tokens grouped by expert, no padding between experts.
        a_scale: (total_m, ceil(k/128)) float32, one scale per token and 128 elements of K.
        b: (E, n, k) float8_e4m3fn, each expert's weights with K contiguous.
        b_scale: (E, ceil(n/128), ceil(k/128)) float32, one scale per 128x128 block.
        expert_offsets: (E + 1,) int32 or int64 on the same device; offs[0] = 0, offs[E] = total_m,
            non-decreasing. Read on the device only: the call never copies to the host.
        out: optional (total_m, n) bfloat16/float16 output; when given, its dtype wins over out_dtype.
        out_dtype: torch.bfloat16 (default) or torch.float16, used when out is None.
        backend: "auto", "triton", "cutlass", "cutlass_single" or "reference".

    Returns:
        out. Rows that belong to no expert are not written.

    Raises:
        TypeError / ValueError for arguments that break the contract (nothing is written into out);
        RuntimeError when the requested backend cannot run the problem, with the reasons.
    """
    problem = check_inputs(a, a_scale, b, b_scale, expert_offsets, out, out_dtype)
    chosen = select_backend(problem, backend)
    if out is None:
        out = torch.empty(problem.total_m, problem.n, dtype=problem.out_dtype, device=problem.device)
    if problem.total_m:
        chosen.run(problem, a, a_scale, b, b_scale, expert_offsets, out)
    return out

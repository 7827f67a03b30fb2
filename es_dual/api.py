"""The public entry points: allocate ``out`` if needed, then the custom op (check -> choose -> launch),
called straight when the torch dispatcher would add nothing (ops.dispatcher_adds_nothing)."""
from __future__ import annotations

import torch

from . import ops  # registers torch.ops.es_dual.grouped_gemm_fp8 (and _masked)
from .environment import getenv
from .problem import _expect_tensor, check_contents, check_inputs, check_masked_contents, check_masked_inputs, output_for


def grouped_gemm_fp8(
    a, a_scale, b, b_scale, expert_offsets, *, out=None, out_dtype=torch.bfloat16, backend="auto", validate=None
) -> torch.Tensor:
    """FP8 blockwise-scaled grouped GEMM for Mixture-of-Experts.

    For every expert e, with rows = offs[e]:offs[e+1]::

        out[rows] = (dequant(a[rows], a_scale[rows]) @ dequant(b[e], b_scale[e]).T).to(out_dtype)

    Args:
        a: (total_m, k) float8_e4m3fn, tokens grouped by expert, no padding between experts.
        a_scale: (total_m, ceil(k/128)) float32, one scale per token and 128 elements of K: contiguous
            (K-major) or MN-major (strides (1, ld), ld >= total_m; "cutlass" reads them with its native
            kernels, "cutlass_single" K-major ones only).
        b: (E, n, k) float8_e4m3fn, each expert's weights with K contiguous.
        b_scale: (E, ceil(n/128), ceil(k/128)) float32, one scale per 128x128 block.
        expert_offsets: (E + 1,) int32 or int64 on the same device; offs[0] = 0, offs[E] = total_m,
            non-decreasing. Read on the device only: the call never copies to the host.
        out: optional (total_m, n) bfloat16/float16 output; when given, its dtype wins over out_dtype.
        out_dtype: torch.bfloat16 (default) or torch.float16, used when out is None.
        backend: "auto", "triton", "cutlass", "cutlass_single" or "reference"; "auto" takes
            ES_DUAL_BACKEND when set, else the fastest backend that can run the problem.
        validate: also check the tensors' contents on the host (offsets start at 0, never decrease and
            end at total_m; scales finite and >= 0). This copies to the host and synchronizes, so it is
            off by default; None reads ES_DUAL_VALIDATE ("1" turns it on).

    Contents are not checked otherwise. Offsets that break the contract are clamped to [0, total_m], an
    expert whose end offset is below its start has no rows, each element of a row claimed by two experts
    holds one of their results, and rows outside every expert's range are not written; no backend reads
    or writes outside the tensors. Scales are used as given: NaN or Inf reaches exactly the output rows
    and columns that the scale multiplies.

    Returns:
        out. Rows that belong to no expert are not written.

    Raises:
        TypeError / ValueError for arguments that break the contract (nothing is written into out);
        RuntimeError when the requested backend cannot run the problem, with the reasons.
    """
    out = output_for(a, a_scale, b, b_scale, expert_offsets, out, out_dtype)
    if validate or (validate is None and getenv("ES_DUAL_VALIDATE") == "1"):
        problem = check_inputs(a, a_scale, b, b_scale, expert_offsets, out)
        check_contents(a_scale, b_scale, expert_offsets, problem.total_m)
    _run_op(torch.ops.es_dual.grouped_gemm_fp8, ops._grouped_gemm_fp8, (a, a_scale, b, b_scale, expert_offsets, out),
            backend)
    return out


def grouped_gemm_fp8_masked(
    a, a_scale, b, b_scale, masked_m, *, out=None, out_dtype=torch.bfloat16, backend="auto", validate=None
) -> torch.Tensor:
    """grouped_gemm_fp8 for the masked layout, what DeepEP's low-latency dispatch produces for decode and
    DeepGEMM's m_grouped_fp8_gemm_nt_masked takes. For every expert e, with m = masked_m[e]::

        out[e, :m] = (dequant(a[e, :m], a_scale[e, :m]) @ dequant(b[e], b_scale[e]).T).to(out_dtype)

    Args:
        a: (E, max_m, k) float8_e4m3fn; a_scale: (E, max_m, ceil(k/128)) float32.
        b, b_scale: as for grouped_gemm_fp8.
        masked_m: (E,) int32 or int64 on the same device: each expert's rows. Read on the device only;
            a count below 0 is taken as 0 and one above max_m as max_m.
        out: optional (E, max_m, n) bfloat16/float16; when given, its dtype wins over out_dtype.
        backend: as for grouped_gemm_fp8 (every backend takes this layout).
        validate: also check on the host that 0 <= masked_m <= max_m and that the scales are finite and
            >= 0 (it synchronizes); None reads ES_DUAL_VALIDATE.

    Returns:
        out. Rows past an expert's count are neither read into a result nor written.
    """
    if out is None:  # every argument checked (and named in errors) before allocating
        problem = check_masked_inputs(a, a_scale, b, b_scale, masked_m, None, out_dtype)
        out = torch.empty(problem.num_experts, problem.max_m, problem.n, dtype=problem.out_dtype, device=problem.device)
    for name, t in (("a", a), ("a_scale", a_scale), ("b", b), ("b_scale", b_scale), ("masked_m", masked_m), ("out", out)):
        _expect_tensor(name, t)  # the op's schema takes tensors only: refused here with the argument's name
    if validate or (validate is None and getenv("ES_DUAL_VALIDATE") == "1"):
        problem = check_masked_inputs(a, a_scale, b, b_scale, masked_m, out)
        check_masked_contents(a_scale, b_scale, masked_m, problem.max_m)
    _run_op(torch.ops.es_dual.grouped_gemm_fp8_masked, ops._grouped_gemm_fp8_masked,
            (a, a_scale, b, b_scale, masked_m, out), backend)
    return out


def _run_op(op, implementation, tensors, backend) -> None:
    """op(*tensors, backend), whose last tensor is the mutated out; straight into the implementation
    when the dispatcher would add nothing but its host time."""
    if ops.dispatcher_adds_nothing(tensors):
        implementation(*tensors, backend)
        ops.bump_version(tensors[-1])
    else:
        op(*tensors, backend)

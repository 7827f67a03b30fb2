"""The reference grouped GEMM: plain torch, float32 math on the dequantized inputs, a loop over experts.

It reads ``expert_offsets`` on the host (``.tolist()``), which is fine for a reference and the reason it is
never the fast path. It runs on the CPU and on any GPU.
"""
from __future__ import annotations

import os

import torch

from .problem import check_contents, check_inputs, check_masked_contents, check_masked_inputs
from .quant import dequantize_per_block, dequantize_per_token_group


def grouped_gemm_fp8_reference(a, a_scale, b, b_scale, expert_offsets, *, out=None, out_dtype=torch.bfloat16):
    """out[offs[e]:offs[e+1]] = (dequant(a)[rows] @ dequant(b[e]).T).to(out_dtype) for every expert e.

    The arguments, errors and ES_DUAL_VALIDATE of es_dual.grouped_gemm_fp8, computed here directly (the
    "reference" backend of the public function runs the same loop)."""
    problem = check_inputs(a, a_scale, b, b_scale, expert_offsets, out, out_dtype)  # raises before any write
    if os.environ.get("ES_DUAL_VALIDATE") == "1":
        check_contents(a_scale, b_scale, expert_offsets, problem.total_m)
    if out is None:
        out = torch.empty(problem.total_m, problem.n, dtype=problem.out_dtype, device=problem.device)
    if problem.total_m:
        run_reference(a, a_scale, b, b_scale, expert_offsets, out)
    return out


def run_reference(a, a_scale, b, b_scale, expert_offsets, out, row_index=None) -> None:
    """The loop itself, on already validated inputs; writes only the rows that belong to an expert.
    row_index (Problem.a_rows): grouped row r reads row row_index[r] of a and a_scale."""
    offs = expert_offsets.tolist()
    total_m = out.shape[0]
    # The documented meaning of offsets that break the contract, shared by every backend: clamp to
    # [0, total_m]; an expert whose end lies before its start has no rows.
    ranges = []
    for e in range(b.shape[0]):
        lo = min(max(offs[e], 0), total_m)
        ranges.append((lo, min(max(offs[e + 1], lo), total_m)))
    _run_ranges(a, a_scale, b, b_scale, ranges, out, row_index)


def run_reference_masked(a, a_scale, b, b_scale, masked_m, out) -> None:
    """The loop of the masked layout, on validated inputs: expert e's rows are a[e, :m] with m =
    masked_m[e] clamped to [0, max_m]; nothing else of out is written."""
    num_experts, max_m, k = a.shape
    ranges = [(e * max_m, e * max_m + min(max(m, 0), max_m)) for e, m in enumerate(masked_m.tolist())]
    _run_ranges(a.view(num_experts * max_m, k), a_scale.view(num_experts * max_m, -1), b, b_scale, ranges,
                out.view(num_experts * max_m, -1))


def _run_ranges(a, a_scale, b, b_scale, ranges, out, row_index=None) -> None:
    """out[lo:hi] = dequant(a[lo:hi]) @ dequant(b[e]).T for expert e's row range (lo, hi) (a's rows
    row_index[lo:hi] instead, given a row index)."""
    a_deq = dequantize_per_token_group(a, a_scale)
    for e, (lo, hi) in enumerate(ranges):
        if hi == lo:
            continue
        b_deq = dequantize_per_block(b[e], b_scale[e])
        rows = a_deq[lo:hi] if row_index is None else a_deq[row_index[lo:hi].long()]
        # float32 all the way: TF32 would add ~1e-3 relative error and measure the reference, not the kernel.
        out[lo:hi] = _matmul_fp32(rows, b_deq.T).to(out.dtype)


def grouped_gemm_fp8_masked_reference(a, a_scale, b, b_scale, masked_m, *, out=None, out_dtype=torch.bfloat16):
    """out[e, :m] = (dequant(a[e, :m]) @ dequant(b[e]).T).to(out_dtype), m = masked_m[e] clamped to
    [0, max_m], for every expert e: the masked layout's arguments, errors and ES_DUAL_VALIDATE of
    es_dual.grouped_gemm_fp8_masked, computed here directly."""
    problem = check_masked_inputs(a, a_scale, b, b_scale, masked_m, out, out_dtype)  # raises before any write
    if os.environ.get("ES_DUAL_VALIDATE") == "1":
        check_masked_contents(a_scale, b_scale, masked_m, problem.max_m)
    if out is None:
        out = torch.empty(problem.num_experts, problem.max_m, problem.n, dtype=problem.out_dtype, device=problem.device)
    if problem.total_m:
        run_reference_masked(a, a_scale, b, b_scale, masked_m, out)
    return out


def _matmul_fp32(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.is_cuda:
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return x @ y
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    return x @ y

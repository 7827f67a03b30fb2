"""Everything the benchmark can time, as one table: name -> how to prepare a call on a workload's inputs.

``prepare(problem, inputs)`` returns ``(fn, checked_inputs)``: ``fn()`` runs one call and returns its output;
``checked_inputs`` are blockwise-form inputs (the tensor contract) whose reference the output must match.
For es_dual's own backends they are the inputs themselves; a provider that quantizes more coarsely (one
scale per row, say) is checked against the reference of *its* quantization written in blockwise form,
so a wrong answer is caught whatever the scaling. ``prepare`` raises ``Unavailable`` with the reason when
the provider cannot run here. Preparation (padding, layout changes, host-side routing) is not timed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..api import grouped_gemm_fp8
from ..dispatch import BACKENDS
from ..problem import SCALE_BLOCK, cdiv


class Unavailable(Exception):
    """The provider cannot run here (missing package, wrong device, unsupported shape)."""


@dataclass(frozen=True)
class Provider:
    name: str
    label: str  # what the numbers mean, for the table's legend
    prepare: Callable  # prepare(problem, inputs) -> (fn, checked_inputs)


def _es_dual(backend: str) -> Callable:
    def prepare(problem, inputs):
        reasons = BACKENDS[backend].not_supported_reasons(problem)
        if reasons:
            raise Unavailable("; ".join(reasons))
        out = torch.empty(problem.total_m, problem.n, dtype=problem.out_dtype, device=problem.device)
        return (lambda: grouped_gemm_fp8(**inputs, out=out, backend=backend)), inputs

    return prepare


def _need_cuda(problem, what: str) -> None:
    if problem.device.type != "cuda":
        raise Unavailable(f"{what} runs on CUDA tensors only")


def _torch_grouped_rowwise(problem, inputs):
    """torch._scaled_grouped_mm: the same FP8 bytes, one scale per token and one per weight column."""
    _need_cuda(problem, "torch._scaled_grouped_mm")
    if not hasattr(torch, "_scaled_grouped_mm"):
        raise Unavailable(f"torch {torch.__version__} has no _scaled_grouped_mm")
    a, b = inputs["a"], inputs["b"]
    row_scale = inputs["a_scale"][:, 0].contiguous()  # (total_m,)
    col_scale = inputs["b_scale"][:, :, 0].repeat_interleave(SCALE_BLOCK, dim=1)[:, : problem.n].contiguous()  # (E, n)
    ends = inputs["expert_offsets"][1:].to(torch.int32)
    b_t = b.transpose(1, 2)  # (E, k, n), column-major per expert, as the op wants
    groups_k = cdiv(problem.k, SCALE_BLOCK)
    checked = dict(
        inputs,
        a_scale=row_scale[:, None].expand(-1, groups_k).contiguous(),
        b_scale=inputs["b_scale"][:, :, :1].expand(-1, -1, groups_k).contiguous(),
    )

    def fn():
        return torch._scaled_grouped_mm(a, b_t, row_scale, col_scale, offs=ends, out_dtype=problem.out_dtype)

    return fn, checked


def _torch_blockwise_loop(problem, inputs):
    """A loop of torch._scaled_mm (cuBLAS) with 1x128 / 128x128 scales, one call per non-empty expert.
    The loop needs the token counts on the host: read here, outside the timed region."""
    _need_cuda(problem, "torch._scaled_mm")
    offs = inputs["expert_offsets"].tolist()
    out = torch.empty(problem.total_m, problem.n, dtype=problem.out_dtype, device=problem.device)
    calls = []
    for e in range(problem.num_experts):
        lo, hi = offs[e], offs[e + 1]
        if hi > lo:
            # cuBLAS wants the activation scales outer-dim-major and the weights column-major.
            a_scale = inputs["a_scale"][lo:hi].t().contiguous().t()
            calls.append((inputs["a"][lo:hi], inputs["b"][e].t(), a_scale, inputs["b_scale"][e].t(), out[lo:hi]))

    def fn():
        for a, b_t, sa, sb, o in calls:
            torch._scaled_mm(a, b_t, sa, sb, out_dtype=problem.out_dtype, out=o)
        return out

    try:
        fn()
    except (RuntimeError, TypeError) as exc:  # this torch or GPU lacks blockwise scaling
        raise Unavailable(f"torch._scaled_mm with 1x128/128x128 scales: {str(exc).splitlines()[0]}") from None
    return fn, inputs


def _deep_gemm():
    try:
        import deep_gemm
    except ImportError as exc:
        raise Unavailable(f"import deep_gemm failed ({exc})") from None
    return deep_gemm


def _deepgemm_contiguous(problem, inputs):
    """DeepGEMM's contiguous grouped layout: every expert's rows padded to a multiple of 128 (built here,
    outside the timed region), one m-grouped call."""
    _need_cuda(problem, "DeepGEMM")
    dg = _deep_gemm()
    align = 128
    offs = inputs["expert_offsets"].tolist()
    padded = sum(cdiv(offs[e + 1] - offs[e], align) * align for e in range(problem.num_experts))
    a = torch.zeros(padded, problem.k, dtype=inputs["a"].dtype, device=problem.device)
    a_scale = torch.ones(padded, cdiv(problem.k, SCALE_BLOCK), device=problem.device)
    group = torch.full((padded,), -1, dtype=torch.int32, device=problem.device)
    rows, row = [], 0
    for e in range(problem.num_experts):
        m = offs[e + 1] - offs[e]
        a[row : row + m] = inputs["a"][offs[e] : offs[e + 1]]
        a_scale[row : row + m] = inputs["a_scale"][offs[e] : offs[e + 1]]
        group[row : row + m] = e
        rows.append((row, offs[e], m))
        row += cdiv(m, align) * align
    out_padded = torch.empty(padded, problem.n, dtype=problem.out_dtype, device=problem.device)
    out = torch.empty(problem.total_m, problem.n, dtype=problem.out_dtype, device=problem.device)

    def fn():
        dg.m_grouped_fp8_gemm_nt_contiguous((a, a_scale), (inputs["b"], inputs["b_scale"]), out_padded, group)
        return out_padded

    def unpadded():  # for the check only: the timed call leaves the padded layout, as DeepGEMM users get it
        fn()
        for src, dst, m in rows:
            out[dst : dst + m] = out_padded[src : src + m]
        return out

    try:
        unpadded()
    except Exception as exc:  # an API that differs from the one this adapter was written for
        raise Unavailable(f"deep_gemm.m_grouped_fp8_gemm_nt_contiguous: {exc}") from None
    return _checked_once(fn, unpadded), inputs


def _deepgemm_masked(problem, inputs):
    """DeepGEMM's masked layout: (E, max_m, k) with a per-expert count, max_m padded from the routing."""
    _need_cuda(problem, "DeepGEMM")
    dg = _deep_gemm()
    offs = inputs["expert_offsets"].tolist()
    counts = [offs[e + 1] - offs[e] for e in range(problem.num_experts)]
    max_m = cdiv(max(counts), 128) * 128
    a = torch.zeros(problem.num_experts, max_m, problem.k, dtype=inputs["a"].dtype, device=problem.device)
    a_scale = torch.ones(problem.num_experts, max_m, cdiv(problem.k, SCALE_BLOCK), device=problem.device)
    for e, m in enumerate(counts):
        a[e, :m] = inputs["a"][offs[e] : offs[e + 1]]
        a_scale[e, :m] = inputs["a_scale"][offs[e] : offs[e + 1]]
    masked_m = torch.tensor(counts, dtype=torch.int32, device=problem.device)
    out3 = torch.empty(problem.num_experts, max_m, problem.n, dtype=problem.out_dtype, device=problem.device)
    expected_m = max(1, problem.total_m // problem.num_experts)

    def fn():
        dg.m_grouped_fp8_gemm_nt_masked((a, a_scale), (inputs["b"], inputs["b_scale"]), out3, masked_m, expected_m)
        return out3

    def unpadded():
        fn()
        return torch.cat([out3[e, :m] for e, m in enumerate(counts)])

    try:
        unpadded()
    except Exception as exc:
        raise Unavailable(f"deep_gemm.m_grouped_fp8_gemm_nt_masked: {exc}") from None
    return _checked_once(fn, unpadded), inputs


def _checked_once(timed, for_check):
    """A callable whose first call returns the output in the contract's layout (for the check) and whose
    later calls run only the timed kernel."""
    state = {"checked": False}

    def fn():
        if not state["checked"]:
            state["checked"] = True
            return for_check()
        return timed()

    return fn


PROVIDERS = {
    p.name: p
    for p in (
        Provider("cutlass", "es_dual CUTLASS SM90, expert-specialized buckets", _es_dual("cutlass")),
        Provider("cutlass_single", "es_dual CUTLASS SM90, one 128x128x128 configuration", _es_dual("cutlass_single")),
        Provider("triton", "es_dual Triton kernel", _es_dual("triton")),
        Provider("torch_grouped_rowwise", "torch._scaled_grouped_mm, rowwise scales (same bytes, coarser scaling)",
                 _torch_grouped_rowwise),
        Provider("torch_blockwise_loop", "torch._scaled_mm 1x128/128x128 per expert, host loop", _torch_blockwise_loop),
        Provider("deepgemm_contiguous", "DeepGEMM m-grouped contiguous (experts padded to 128 rows)", _deepgemm_contiguous),
        Provider("deepgemm_masked", "DeepGEMM m-grouped masked", _deepgemm_masked),
        Provider("reference", "es_dual reference (torch, float32, loop over experts)", _es_dual("reference")),
    )
}

DEFAULT_PROVIDERS = {
    "cuda": ("cutlass", "cutlass_single", "triton", "torch_grouped_rowwise", "torch_blockwise_loop",
             "deepgemm_contiguous", "deepgemm_masked"),
    "cpu": ("reference", "triton"),
}

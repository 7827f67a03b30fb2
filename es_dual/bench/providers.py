"""Everything the benchmark can time, as one table: name -> how to prepare a call on a workload's inputs.

``prepare(problem, inputs)`` returns a ``Call``: ``run()`` is the timed call; ``checked`` are blockwise-form
inputs (the tensor contract) whose reference the output must match. For es_dual's own backends they are the
inputs themselves; a provider that quantizes more coarsely (one scale per row, say) is checked against the
reference of *its* quantization written in blockwise form, so a wrong answer is caught whatever the
scaling. ``prepare`` raises ``Unavailable`` with the reason when the provider cannot run here.

Every provider gets the input layout its users give it, made in ``prepare``, outside the timed region:
padding, layout changes, host-side routing, sorted token ids. Peers (seed_es, DeepGEMM, vLLM's Triton
kernel) are imported when importable (``add_peer_paths`` puts a folder of them on ``sys.path``).
"""
from __future__ import annotations

import importlib
import itertools
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from ..api import grouped_gemm_fp8, grouped_gemm_fp8_masked
from ..dispatch import BACKENDS, select_backend
from ..problem import FP8, SCALE_BLOCK, cdiv


class Unavailable(Exception):
    """The provider cannot run here (missing package, wrong device, unsupported shape)."""


@dataclass(frozen=True)
class Call:
    run: Callable[[], object]  # the timed call
    checked: dict  # blockwise inputs whose reference the output must match
    output: Callable[[], torch.Tensor] | None = None  # for the check: the output in the contract's layout (or run())
    note: str = ""  # what was chosen for this workload (a config, a backend), for the CSV


@dataclass(frozen=True)
class Provider:
    name: str
    label: str  # what the numbers mean, for the table's legend
    prepare: Callable  # prepare(problem, inputs) -> Call
    not_capturable: str = ""  # why a CUDA graph cannot hold the call ("" when it can)


def add_peer_paths(root: str | None) -> list[str]:
    """Put the peers kept in `root` on sys.path: root/seed_es (import seed_es), root (import
    peer_triton_moe) and root/deepgemm_build (import deep_gemm), those that exist. Returns them."""
    if not root:
        return []
    paths = [p for p in (os.path.join(root, "seed_es"), root, os.path.join(root, "deepgemm_build")) if os.path.isdir(p)]
    sys.path[:0] = [p for p in paths if p not in sys.path]
    return paths


def _import(name: str):
    try:
        return importlib.import_module(name)
    except Exception as exc:  # ImportError, or a library that fails to load or initialize
        raise Unavailable(f"import {name} failed: {describe(exc)}") from None


def describe(exc: Exception) -> str:
    """An exception in one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _need_cuda(problem, what: str) -> None:
    if problem.device.type != "cuda":
        raise Unavailable(f"{what} runs on CUDA tensors only")


def _out(problem) -> torch.Tensor:
    return torch.empty(problem.total_m, problem.n, dtype=problem.out_dtype, device=problem.device)


def _counts(inputs) -> list[int]:
    offs = inputs["expert_offsets"].tolist()
    return [hi - lo for lo, hi in zip(offs, offs[1:])]


def _rows_at(counts: list[int], starts: list[int], device) -> torch.Tensor:
    """Row of every token in a padded layout whose expert e starts at row starts[e]."""
    return torch.cat([torch.arange(s, s + c) for s, c in zip(starts, counts)]).to(device)


def _place(src: torch.Tensor, rows: torch.Tensor, total: int, fill: float = 0.0) -> torch.Tensor:
    """src's rows at `rows` of a new tensor of `total` rows, `fill` elsewhere (FP8 zero bytes: +0.0)."""
    if src.dtype == FP8:  # index_copy_ on the bytes: FP8 kernels for it are not everywhere
        out = torch.zeros(total, *src.shape[1:], dtype=torch.uint8, device=src.device)
        return out.index_copy_(0, rows, src.view(torch.uint8)).view(FP8)
    out = torch.full((total, *src.shape[1:]), fill, dtype=src.dtype, device=src.device)
    return out.index_copy_(0, rows, src)


# ---- es_dual ----

def _es_dual(backend: str) -> Callable:
    def prepare(problem, inputs):
        if backend == "auto":
            try:
                chosen = select_backend(problem, "auto").name
            except RuntimeError as exc:
                raise Unavailable(str(exc).splitlines()[0]) from None
        else:
            reasons = BACKENDS[backend].not_supported_reasons(problem)
            if reasons:
                raise Unavailable("; ".join(reasons))
            chosen = backend
        out = _out(problem)
        return Call(lambda: grouped_gemm_fp8(**inputs, out=out, backend=backend), inputs, note=f"backend {chosen}")

    return prepare


# ---- torch ----

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
    return Call(lambda: torch._scaled_grouped_mm(a, b_t, row_scale, col_scale, offs=ends, out_dtype=problem.out_dtype),
                checked)


def _torch_blockwise_loop(problem, inputs):
    """A loop of torch._scaled_mm (cuBLAS) with 1x128 / 128x128 scales, one call per non-empty expert.
    The loop needs the token counts on the host: read here, outside the timed region."""
    _need_cuda(problem, "torch._scaled_mm")
    offs = inputs["expert_offsets"].tolist()
    out = _out(problem)
    calls = []
    for e in range(problem.num_experts):
        lo, hi = offs[e], offs[e + 1]
        if hi > lo:
            # cuBLAS wants the activation scales outer-dim-major and the weights column-major.
            a_scale = inputs["a_scale"][lo:hi].t().contiguous().t()
            calls.append((inputs["a"][lo:hi], inputs["b"][e].t(), a_scale, inputs["b_scale"][e].t(), out[lo:hi]))

    def run():
        for a, b_t, sa, sb, o in calls:
            torch._scaled_mm(a, b_t, sa, sb, out_dtype=problem.out_dtype, out=o)
        return out

    try:
        run()
    except (RuntimeError, TypeError) as exc:  # this torch or GPU lacks blockwise scaling
        raise Unavailable(f"torch._scaled_mm with 1x128/128x128 scales: {str(exc).splitlines()[0]}") from None
    return Call(run, inputs)


# ---- peers ----

def _seed_es(problem, inputs):
    """The seed's kernel (sgl-kernel's expert-specialization grouped GEMM) through its ctypes wrapper;
    its per-routing conversion (prepare) is made here, the timed call is the wrapper's prepared path."""
    _need_cuda(problem, "seed_es")
    if torch.cuda.get_device_capability(problem.device) != (9, 0):
        raise Unavailable("libseed_es.so holds sm_90a code only")
    if problem.n % 128 or problem.k % 128:
        raise Unavailable(f"n and k must be multiples of 128 (n={problem.n}, k={problem.k})")
    if problem.out_dtype != torch.bfloat16:
        raise Unavailable("bfloat16 output only (this build)")
    seed_es = _import("seed_es")
    offsets = inputs["expert_offsets"].to(torch.int32).contiguous()
    # fresh: private buffers; the cached ones are shared by every workload of the same (E, n, k).
    prepared = seed_es.prepare(offsets, problem.n, problem.k, fresh=True)
    out = _out(problem)
    a, a_scale, b, b_scale = (inputs[key] for key in ("a", "a_scale", "b", "b_scale"))
    return Call(lambda: seed_es.seed_es_grouped_mm(out, a, b, a_scale, b_scale, offsets, prepared=prepared), inputs)


def _deep_gemm():
    dg = _import("deep_gemm")
    for name in ("get_mn_major_tma_aligned_tensor", "get_mk_alignment_for_contiguous_layout"):
        if not hasattr(dg.utils, name):
            raise Unavailable(f"deep_gemm {getattr(dg, '__version__', '?')} has no deep_gemm.utils.{name}")
    return dg


def _deepgemm_contiguous(problem, inputs):
    """DeepGEMM's m-grouped contiguous layout as its users give it: every expert's rows padded to the
    layout's alignment, m_indices naming each row's expert (-1 on padding), the activation scales
    MN-major and TMA-aligned. All made here, outside the timed region."""
    _need_cuda(problem, "DeepGEMM")
    dg = _deep_gemm()
    align = dg.utils.get_mk_alignment_for_contiguous_layout()  # the kernel's BLOCK_M (128 on SM90)
    counts = _counts(inputs)
    padded = [cdiv(c, align) * align for c in counts]
    starts = [0, *itertools.accumulate(padded)][:-1]
    rows, total = _rows_at(counts, starts, problem.device), sum(padded)
    a = _place(inputs["a"], rows, total)
    a_scale = dg.utils.get_mn_major_tma_aligned_tensor(_place(inputs["a_scale"], rows, total, fill=1.0))
    m_indices = torch.full((total,), -1, dtype=torch.int32, device=problem.device)
    experts = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(problem.device, torch.int32)
    m_indices.index_copy_(0, rows, experts)
    out = torch.empty(total, problem.n, dtype=problem.out_dtype, device=problem.device)
    b = (inputs["b"], inputs["b_scale"])

    def run():  # the padded output is what DeepGEMM users get
        dg.m_grouped_fp8_gemm_nt_contiguous((a, a_scale), b, out, m_indices)
        return out

    return Call(run, inputs, output=lambda: run().index_select(0, rows), note=f"{total} padded rows (align {align})")


def _masked_layout(problem, inputs):
    """(a, a_scale, masked_m, rows, max_m): the masked layout, (E, max_m, k) with a per-expert count, max_m
    from the routing rounded up to 128 (what a dispatch buffer holds), rows: where each token landed."""
    counts, experts = _counts(inputs), problem.num_experts
    max_m = max(128, cdiv(max(counts), 128) * 128)
    rows = _rows_at(counts, [e * max_m for e in range(experts)], problem.device)
    a = _place(inputs["a"], rows, experts * max_m).view(experts, max_m, problem.k)
    a_scale = _place(inputs["a_scale"], rows, experts * max_m, fill=1.0).view(experts, max_m, -1)
    masked_m = torch.tensor(counts, dtype=torch.int32, device=problem.device)
    return a, a_scale, masked_m, rows, max_m


def _es_dual_masked(problem, inputs):
    """es_dual.grouped_gemm_fp8_masked on the masked layout (made here, outside the timed region)."""
    a, a_scale, masked_m, rows, max_m = _masked_layout(problem, inputs)
    out = torch.empty(problem.num_experts, max_m, problem.n, dtype=problem.out_dtype, device=problem.device)
    b, b_scale = inputs["b"], inputs["b_scale"]

    def run():
        return grouped_gemm_fp8_masked(a, a_scale, b, b_scale, masked_m, out=out)

    return Call(run, inputs, output=lambda: run().view(-1, problem.n).index_select(0, rows), note=f"max_m {max_m}")


def _deepgemm_masked(problem, inputs):
    """DeepGEMM's masked layout (_masked_layout) with the activation scales MN-major and TMA-aligned;
    made here, outside the timed region."""
    _need_cuda(problem, "DeepGEMM")
    dg = _deep_gemm()
    experts = problem.num_experts
    a, a_scale, masked_m, rows, max_m = _masked_layout(problem, inputs)
    a_scale = dg.utils.get_mn_major_tma_aligned_tensor(a_scale)
    out = torch.empty(experts, max_m, problem.n, dtype=problem.out_dtype, device=problem.device)
    expected_m = max(1, problem.total_m // experts)  # the host's guess of the count per expert, as users pass
    b = (inputs["b"], inputs["b_scale"])

    def run():
        dg.m_grouped_fp8_gemm_nt_masked((a, a_scale), b, out, masked_m, expected_m)
        return out

    return Call(run, inputs, output=lambda: run().view(-1, problem.n).index_select(0, rows),
                note=f"max_m {max_m}, expected_m {expected_m}")


def _vllm_config(pt, problem) -> tuple[dict, str]:
    """vLLM's config choice: its tuned tables are keyed by (E, N = intermediate size per shard) and the
    token count M before top-k expansion. A gate-up GEMM has n = 2N, a down GEMM k = N; the public models
    route each token to 8 experts, so M = total_m / 8. No table for either reading: vLLM's default."""
    tokens = max(1, problem.total_m // 8)
    for inter in (problem.n // 2, problem.k):
        if pt.config_source(problem.num_experts, inter) != "default":
            config = pt.get_tuned_config(problem.num_experts, inter, tokens)
            return config, f"tuned config E={problem.num_experts} N={inter} M={tokens}: {config}"
    config = pt.get_default_config(problem.total_m, problem.num_experts, problem.n, problem.k, 1, "fp8_w8a8",
                                   [SCALE_BLOCK, SCALE_BLOCK])
    return config, f"default config: {config}"


def _vllm_triton(problem, inputs):
    """vLLM's Triton fused-MoE kernel as a grouped GEMM (top_k 1, no routing weights), called as vLLM's
    fused_experts calls it: invoke_fused_moe_kernel on sorted token ids made once, here, from the offsets
    (peer_grouped_gemm would rebuild them inside every call)."""
    _need_cuda(problem, "vLLM's Triton kernel")
    pt = _import("peer_triton_moe")
    import triton.language as tl

    config, note = _vllm_config(pt, problem)
    offsets = inputs["expert_offsets"].to(torch.int32)
    block_m = config["BLOCK_SIZE_M"]
    sorted_ids, expert_ids, padded_total = pt.align_from_expert_offsets(offsets, problem.total_m, block_m)
    out = _out(problem)
    compute_type = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[problem.out_dtype]

    def run():
        pt.invoke_fused_moe_kernel(
            inputs["a"], inputs["b"], out.view(problem.total_m, 1, problem.n), inputs["a_scale"], inputs["b_scale"],
            None, None, sorted_ids, expert_ids, padded_total, False, 1, config,  # B_zp, topk_weights, ..., top_k 1
            compute_type=compute_type, use_fp8_w8a8=True, use_int8_w8a8=False, use_int8_w8a16=False,
            use_int4_w4a16=False, per_channel_quant=False, block_shape=[SCALE_BLOCK, SCALE_BLOCK])
        return out

    return Call(run, inputs, note=note)


HOST_SYNC = "reads the expert offsets on the host"
PROVIDERS = {
    p.name: p
    for p in (
        Provider("cutlass", "es_dual CUTLASS SM90, expert-specialized buckets", _es_dual("cutlass")),
        Provider("cutlass_single", "es_dual CUTLASS SM90, one 128x128x128 configuration", _es_dual("cutlass_single")),
        Provider("triton", "es_dual Triton kernel", _es_dual("triton")),
        Provider("auto", "es_dual backend='auto' (the dispatcher's choice; the CSV's note names it)", _es_dual("auto")),
        Provider("seed_es", "the seed's kernel (sgl-kernel ES grouped GEMM, 3 streams), prepare() outside the "
                 "timed region", _seed_es),
        Provider("masked", "es_dual.grouped_gemm_fp8_masked ((E, max_m, k) with counts on the device, backend "
                 "'auto')", _es_dual_masked),
        Provider("deepgemm_contiguous", "DeepGEMM m-grouped contiguous (rows padded per expert, m_indices, "
                 "MN-major TMA-aligned act. scales)", _deepgemm_contiguous),
        Provider("deepgemm_masked", "DeepGEMM m-grouped masked ((E, max_m, k), MN-major TMA-aligned act. scales)",
                 _deepgemm_masked),
        Provider("vllm_triton", "vLLM's Triton fused-MoE kernel, sorted ids made outside the timed region; "
                 "tuned config when vLLM has one, else its default", _vllm_triton),
        Provider("torch_grouped_rowwise", "torch._scaled_grouped_mm, rowwise scales (same bytes, coarser scaling)",
                 _torch_grouped_rowwise),
        Provider("torch_blockwise_loop", "torch._scaled_mm 1x128/128x128 per expert, host loop", _torch_blockwise_loop,
                 not_capturable="a host loop over the counts read at preparation; a graph would freeze one routing"),
        Provider("reference", "es_dual reference (torch, float32, loop over experts)", _es_dual("reference"),
                 not_capturable=HOST_SYNC),
    )
}

# The peers es_dual is measured against in the summary: what users would otherwise run.
PEERS = ("seed_es", "deepgemm_contiguous", "deepgemm_masked", "torch_grouped_rowwise", "vllm_triton")

# torch_blockwise_loop is left out of the GPU default: cuBLAS refuses its scaling for most skewed row
# counts, it has no kernel-mode number, and its eager number is mostly the host loop of up to E launches.
DEFAULT_PROVIDERS = {
    "cuda": ("cutlass", "cutlass_single", "triton", "auto", "masked", *PEERS),
    "cpu": ("reference", "triton"),
}

"""es_dual.compat.sgl_kernel: sgl-kernel's call, made the way sgl-kernel's own test makes it (column-major
weights and weight scales, start offsets, per-expert problem sizes and strides, a workspace), gives what
es_dual's own API gives on the same data."""
import re

import pytest
import torch

import es_dual
from es_dual.compat.sgl_kernel import es_fp8_blockwise_scaled_grouped_mm
from support import needs_gpu

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sgl_call_args(counts, n, k, out_dtype, seed=0):
    """(sgl-kernel's argument list, es_dual's (a, a_scale, b, b_scale, offsets)) for the same data."""
    g = torch.Generator().manual_seed(seed)
    total_m, num_experts = sum(counts), len(counts)
    a, a_scale = es_dual.quantize_fp8_per_token_group(torch.randn(total_m, k, generator=g))
    b, b_scale = es_dual.quantize_fp8_per_block(torch.randn(num_experts, n, k, generator=g) * k**-0.5)
    a, a_scale, b, b_scale = (t.to(DEVICE) for t in (a, a_scale, b, b_scale))
    starts = torch.tensor([sum(counts[:e]) for e in range(num_experts)], dtype=torch.int32, device=DEVICE)
    problem_sizes = torch.tensor([[m, n, k] for m in counts], dtype=torch.int32, device=DEVICE)
    output = torch.full((total_m, n), float("nan"), dtype=out_dtype, device=DEVICE)
    strides = torch.full((num_experts,), k, dtype=torch.int64, device=DEVICE)
    workspace = torch.empty(1 << 20, dtype=torch.uint8, device=DEVICE)
    sgl = [output, a, b.transpose(1, 2), a_scale, b_scale.transpose(1, 2), strides, strides,
           torch.full_like(strides, n), problem_sizes, starts, workspace]
    offsets = torch.cat((starts, torch.tensor([total_m], dtype=torch.int32, device=DEVICE)))
    return sgl, (a, a_scale, b, b_scale, offsets)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [7], [0, 0, 2]])
def test_same_as_es_dual(counts, out_dtype):
    sgl, ours = _sgl_call_args(counts, 128, 256, out_dtype)
    es_fp8_blockwise_scaled_grouped_mm(*sgl)
    want = es_dual.grouped_gemm_fp8(*ours, out_dtype=out_dtype)
    assert torch.equal(sgl[0], want)


def test_layouts_are_checked_by_name():
    sgl, _ = _sgl_call_args([2, 2], 128, 256, torch.bfloat16)
    row_major = list(sgl)
    row_major[2] = sgl[2].contiguous()  # (E, k, n) row-major: not the view sgl-kernel's callers pass
    with pytest.raises(ValueError, match=re.escape("b: expected (E, k, n) as the transpose of a contiguous tensor")):
        es_fp8_blockwise_scaled_grouped_mm(*row_major)
    wrong_sizes = list(sgl)
    wrong_sizes[8] = sgl[8][:1]
    with pytest.raises(ValueError, match=re.escape("problem_sizes: expected shape (2, 3), got (1, 3)")):
        es_fp8_blockwise_scaled_grouped_mm(*wrong_sizes)


@needs_gpu
def test_no_host_sync_graph_capture():
    """The call is captured in a CUDA graph (a host synchronization inside would fail the capture) and
    replays to the same result."""
    sgl, ours = _sgl_call_args([4, 1, 6], 128, 256, torch.bfloat16)
    es_fp8_blockwise_scaled_grouped_mm(*sgl)  # load the library outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        es_fp8_blockwise_scaled_grouped_mm(*sgl)
    sgl[0].fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(sgl[0], es_dual.grouped_gemm_fp8(*ours))

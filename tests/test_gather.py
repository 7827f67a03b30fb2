"""Gathered rows (Problem.a_rows): grouped row r of the GEMM reads row row_index[r] of a and a_scale, as the
MoE layer's first GEMM reads each token's one quantized row for every expert the token is routed to.
Only the CUTLASS backend's native kernels gather (their producer loads the rows by index); the others say
so. On the GPU the gathered call gives the bits of the same call on the rows gathered beforehand."""
import dataclasses

import pytest
import torch

from es_dual.cutlass import buckets
from es_dual.cutlass.launch import plan_cutlass
from es_dual.dispatch import BACKENDS, available_backends
from es_dual.problem import Problem, mn_major_ld
from support import make_inputs, mn_major, needs_gpu, poisoned_out


def _on_cpu_terms(name):
    """BACKENDS[name] replayed on CPU terms, so that only its reasons about the problem are left."""
    return dataclasses.replace(BACKENDS[name], device_types=("cpu",), availability=lambda device: [],
                               min_capability=None, max_capability=None)


def test_backends_say_whether_they_gather_rows():
    problem = Problem(40, 256, 384, 4, torch.bfloat16, torch.device("cpu"), a_rows=10)
    assert _on_cpu_terms("cutlass").not_supported_reasons(problem) == []
    assert _on_cpu_terms("cutlass").not_supported_reasons(problem._replace(num_experts=2000)) == [
        "gathers rows with its native kernels only, which do not take this size"]
    assert _on_cpu_terms("cutlass").not_supported_reasons(problem._replace(out_dtype=torch.float16)) == [
        "gathers rows for torch.bfloat16 output only, not torch.float16"]
    assert _on_cpu_terms("cutlass_single").not_supported_reasons(problem) == [
        "gathers no rows (its kernels read a's rows in TMA boxes)"]
    for name in ("triton", "reference"):
        assert _on_cpu_terms(name).not_supported_reasons(problem) == ["does not gather rows (Problem.a_rows)"]


@pytest.mark.parametrize("total_m, k, want", [(40, 256, "native"), (40, 7168, "native"), (8 * 4096, 7168, "native_mc")])
def test_gathered_rows_take_a_native_mode(total_m, k, want):
    assert buckets.es_mode(total_m, 4096, k, 8, gather=True) == want


def _gathered_call(inputs, a_rows, row_index, mode, out):
    """The CUTLASS backend's planned launch on gathered rows: a and a_scale hold a_rows rows."""
    a, a_scale, b = inputs["a"], inputs["a_scale"], inputs["b"]
    num_experts, n, k = b.shape
    problem = Problem(row_index.numel(), n, k, num_experts, out.dtype, a.device, a_scale_ld=mn_major_ld(a_scale),
                      a_rows=a_rows)
    tensors = (a, a_scale, b, inputs["b_scale"], inputs["expert_offsets"], out, row_index)
    plan_cutlass(problem, torch.int32, mode)(tuple(t.data_ptr() for t in tensors), lambda: tensors)


@needs_gpu
@pytest.mark.parametrize("mode", [None, "native", "native_wide", "native_mc"])
@pytest.mark.parametrize("k, scales", [(640, "k_major"), (656, "k_major"), (384, "mn_major")])
def test_native_kernels_gather_rows(mode, k, scales):
    """Experts of every kind (decode, small, large; one empty), rows of 40 tokens picked at random with
    repeats, k a multiple of 128 or not (the last block's columns past k read as zeros): the bits of the
    call on the gathered rows; rows of no expert (their indices out of range) neither read nor written."""
    if "cutlass" not in available_backends():
        pytest.skip("the CUTLASS library is not available here")
    counts, tokens = [5, 0, 40, 300, 64], 40
    grouped = make_inputs(counts, 384, k, seed=11, device="cuda")
    total_m = sum(counts)
    g = torch.Generator(device="cuda").manual_seed(12)
    token_rows = make_inputs([tokens], 128, k, seed=13, device="cuda")
    a, a_scale = token_rows["a"], token_rows["a_scale"]
    row_index = torch.randint(0, tokens, (total_m + 7,), generator=g, device="cuda", dtype=torch.int32)
    row_index[total_m:] = 2**30  # past the last expert: never followed
    offsets = grouped["expert_offsets"]
    inputs = dict(grouped, a=a, a_scale=mn_major(a_scale, 48) if scales == "mn_major" else a_scale)
    got = poisoned_out(total_m + 7, 384, torch.bfloat16, "cuda")
    _gathered_call(dict(inputs, expert_offsets=offsets), tokens, row_index, mode, got)

    rows = row_index[:total_m].long()
    want = poisoned_out(total_m + 7, 384, torch.bfloat16, "cuda")
    gathered = dict(grouped, a=torch.cat([a[rows], a[:7]]), a_scale=torch.cat([a_scale[rows], a_scale[:7]]),
                    expert_offsets=offsets)
    tensors = (gathered["a"], gathered["a_scale"], grouped["b"], grouped["b_scale"], offsets, want)
    problem = Problem(total_m + 7, 384, k, len(counts), torch.bfloat16, want.device)
    plan_cutlass(problem, torch.int32, mode or "native")(tuple(t.data_ptr() for t in tensors), lambda: tensors)
    torch.cuda.synchronize()
    assert torch.equal(got[:total_m], want[:total_m])
    assert got[total_m:].isnan().all(), "rows of no expert were written"

"""Gathered rows (Problem.a_rows): grouped row r of the GEMM reads row row_index[r] of a and a_scale, as the
MoE layer's first GEMM reads each token's one quantized row for every expert the token is routed to.
The reference, the Triton kernel and the CUTLASS backend's native kernels gather (the native producer loads
the rows by index); cutlass_single says it does not. A gathered call gives the bits of the same call on the
rows gathered beforehand."""
import dataclasses

import pytest
import torch

from es_dual.cutlass import buckets
from es_dual.cutlass.launch import plan_cutlass
from es_dual.dispatch import BACKENDS, available_backends, select_backend
from es_dual.problem import Problem, mn_major_ld
from support import make_inputs, mn_major, needs_gpu, poisoned_out

BACKEND_NAMES = tuple(b for b in available_backends() if b != "cutlass_single")


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
        assert _on_cpu_terms(name).not_supported_reasons(problem) == []
    for name in BACKENDS:
        assert "gathers rows in the contiguous layout only, not the masked one" in _on_cpu_terms(
            name).not_supported_reasons(problem._replace(max_m=10))


@pytest.mark.parametrize("total_m, k, want", [(40, 256, "native"), (40, 7168, "native"), (8 * 4096, 7168, "native_mc")])
def test_gathered_rows_take_a_native_mode(total_m, k, want):
    assert buckets.es_mode(total_m, 4096, k, 8, gather=True) == want


def _call(inputs, out, row_index=None, mode=None, backend="cutlass"):
    """The planned launch of `backend` (the CUTLASS backend: of `mode`) into out, on rows gathered by
    row_index (a and a_scale then hold the rows it addresses) or on a's own rows."""
    a, a_scale, b = inputs["a"], inputs["a_scale"], inputs["b"]
    num_experts, n, k = b.shape
    gathered = () if row_index is None else (row_index,)
    problem = Problem(out.shape[0], n, k, num_experts, out.dtype, a.device, a_scale_ld=mn_major_ld(a_scale),
                      a_rows=a.shape[0] if gathered else 0)
    tensors = (a, a_scale, b, inputs["b_scale"], inputs["expert_offsets"], out, *gathered)
    plan = plan_cutlass(problem, torch.int32, mode) if mode else select_backend(problem, backend).plan(problem, torch.int32)
    plan(tuple(t.data_ptr() for t in tensors), lambda: tensors)


def _gathered_and_given(counts, tokens, n, k, device, scales="k_major", mode=None, backend="cutlass"):
    """(out of the call on rows gathered from `tokens` rows, out of the same call on those rows gathered
    beforehand, the rows of experts): rows of tokens picked at random with repeats; 7 rows past the last
    expert whose indices are out of range."""
    grouped = make_inputs(counts, n, k, seed=11, device=device)
    total_m = sum(counts)
    g = torch.Generator(device=device).manual_seed(12)
    token_rows = make_inputs([tokens], 128, k, seed=13, device=device)
    a, a_scale = token_rows["a"], token_rows["a_scale"]
    row_index = torch.randint(0, tokens, (total_m + 7,), generator=g, device=device, dtype=torch.int32)
    row_index[total_m:] = 2**30  # past the last expert: never followed
    got = poisoned_out(total_m + 7, n, torch.bfloat16, device)
    _call(dict(grouped, a=a, a_scale=mn_major(a_scale, tokens + 8) if scales == "mn_major" else a_scale), got,
          row_index, mode, backend)
    rows = row_index[:total_m].long()
    want = poisoned_out(total_m + 7, n, torch.bfloat16, device)
    # the CUTLASS backend's mode of the gathered call (a native one), for the call on a's own rows too
    if backend == "cutlass" and mode is None:
        mode = buckets.es_mode(total_m + 7, n, k, len(counts), gather=True)
    _call(dict(grouped, a=torch.cat([a[rows], a[:7]]), a_scale=torch.cat([a_scale[rows], a_scale[:7]])), want,
          mode=mode, backend=backend)
    return got, want, total_m


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_backends_gather_rows(device, backend):
    """Every backend that gathers: the bits of the call on the rows gathered beforehand; rows of no expert
    neither read (their indices are out of range) nor written."""
    counts = [5, 0, 40, 70, 12] if device.type == "cuda" else [5, 0, 17, 3]
    got, want, total_m = _gathered_and_given(counts, 24, 256, 640 if device.type == "cuda" else 256, device,
                                             backend=backend)
    assert torch.equal(got[:total_m].cpu(), want[:total_m].cpu())
    assert got[total_m:].isnan().all(), "rows of no expert were written"


@needs_gpu
@pytest.mark.parametrize("mode", [None, "native", "native_wide", "native_mc"])
@pytest.mark.parametrize("k, scales", [(640, "k_major"), (656, "k_major"), (384, "mn_major")])
def test_native_kernels_gather_rows(mode, k, scales):
    """The native kernels: experts of every kind (decode, small, large; one empty), k a multiple of 128 or
    not (the last block's columns past k read as zeros), K-major or MN-major scales."""
    if "cutlass" not in available_backends():
        pytest.skip("the CUTLASS library is not available here")
    got, want, total_m = _gathered_and_given([5, 0, 40, 300, 64], 40, 384, k, "cuda", scales, mode)
    torch.cuda.synchronize()
    assert torch.equal(got[:total_m], want[:total_m])
    assert got[total_m:].isnan().all(), "rows of no expert were written"

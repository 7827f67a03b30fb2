"""Activation scales in either layout of the contract: K-major (contiguous, a row's scales together) or
MN-major (strides (1, ld), ld >= total_m: a group's scales together, DeepGEMM's layout). The same call
gives the same bits in both; backends that read K-major scales only say so, and the CUTLASS backend takes
MN-major ones to its native kernels."""
import dataclasses

import pytest
import torch

import es_dual
from es_dual.cutlass import buckets
from es_dual.cutlass.launch import grouped_gemm_cutlass
from es_dual.dispatch import BACKENDS, available_backends, select_backend
from es_dual.problem import Problem, check_call, check_inputs, mn_major_ld
from support import make_inputs, mn_major, needs_gpu


COUNTS = [5, 0, 3, 9]  # 17 rows: padded to 20 for 16-byte aligned groups


@pytest.mark.parametrize("backend", [b for b in ("reference", "triton") if b in available_backends()])
@pytest.mark.parametrize("pad", [0, 3])
def test_mn_major_scales_give_the_same_bits(device, backend, pad):
    if backend not in available_backends(device):
        pytest.skip(f"{backend} does not run on {device} here")
    inputs = make_inputs(COUNTS, 256, 384, seed=5, device=device)
    want = es_dual.grouped_gemm_fp8(**inputs, backend=backend)
    total_m = inputs["a_scale"].shape[0]
    inputs["a_scale"] = mn_major(inputs["a_scale"], total_m + pad)
    assert inputs["a_scale"].stride() == (1, total_m + pad)
    got = es_dual.grouped_gemm_fp8(**inputs, backend=backend)
    assert torch.equal(got, want)


def test_the_problem_names_the_layout():
    inputs = make_inputs(COUNTS, 256, 384, seed=5, device="cpu")
    out = torch.empty(17, 256, dtype=torch.bfloat16)
    assert check_inputs(**inputs).a_scale_ld == 0
    inputs["a_scale"] = mn_major(inputs["a_scale"], 20)
    assert mn_major_ld(inputs["a_scale"]) == 20
    assert check_inputs(**inputs).a_scale_ld == 20
    # the per-call fast path agrees with the full check, and hands on the scales' own pointer
    problem, ptrs = check_call(*(inputs[n] for n in ("a", "a_scale", "b", "b_scale", "expert_offsets")), out)
    assert problem == check_inputs(**inputs, out=out) and problem.a_scale_ld == 20
    assert ptrs[1] == inputs["a_scale"].data_ptr()


@pytest.mark.parametrize("strides, message", [
    ((1, 16), "a_scale: expected a contiguous (row-major, K-major) tensor or an MN-major one"),  # ld < total_m
    ((6, 2), "a_scale: expected a contiguous (row-major, K-major) tensor or an MN-major one"),   # K stride 2
])
def test_other_scale_layouts_are_refused(strides, message):
    inputs = make_inputs(COUNTS, 256, 384, seed=5, device="cpu")
    storage = torch.ones(200)
    inputs["a_scale"] = storage.as_strided((17, 3), strides)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        es_dual.grouped_gemm_fp8(**inputs, backend="reference")


def test_masked_scales_stay_k_major():
    inputs = make_inputs([4, 4], 256, 384, seed=5, device="cpu")
    a = inputs["a"].view(2, 4, 384)
    a_scale = inputs["a_scale"].view(2, 4, 3).transpose(1, 2).contiguous().transpose(1, 2)  # MN-major per expert
    with pytest.raises(ValueError, match="a_scale: expected a contiguous"):
        es_dual.grouped_gemm_fp8_masked(a, a_scale, inputs["b"], inputs["b_scale"],
                                        torch.tensor([4, 2], dtype=torch.int32), backend="reference")


def _on_cpu_terms(name):
    """BACKENDS[name] replayed on CPU terms, so that only its reasons about the problem are left."""
    return dataclasses.replace(BACKENDS[name], device_types=("cpu",), availability=lambda device: [],
                               min_capability=None, max_capability=None)


def test_backends_say_which_scale_layouts_they_read():
    """The CUTLASS kernels read K-major scales: cutlass_single refuses MN-major ones, cutlass takes them to
    its native kernels where those fit, Triton and the reference read both."""
    problem = Problem(17, 256, 384, 4, torch.bfloat16, torch.device("cpu"), a_scale_ld=20)
    assert _on_cpu_terms("cutlass_single").not_supported_reasons(problem) == [
        "reads K-major activation scales only (a_scale is MN-major)"]
    assert _on_cpu_terms("cutlass").not_supported_reasons(problem) == []
    assert _on_cpu_terms("cutlass").not_supported_reasons(problem._replace(num_experts=2000)) == [
        "reads MN-major activation scales with its native kernels only, which do not take this size"]
    for name in BACKENDS:
        assert _on_cpu_terms(name).not_supported_reasons(problem._replace(a_scale_ld=0)) == []
    for name in ("triton", "reference"):
        assert _on_cpu_terms(name).not_supported_reasons(problem) == []


@pytest.mark.parametrize("total_m, k, tokens_known, want", [
    (17, 256, True, "native"), (17, 7168, True, "native"), (8 * 4096, 7168, True, "native_mc"),
    (8 * 4096, 7168, False, "native"),
])
def test_mn_major_scales_take_a_native_mode(total_m, k, tokens_known, want):
    assert buckets.es_mode(total_m, 4096, k, 8, tokens_known, k_major_scales=False) == want


@needs_gpu
@pytest.mark.parametrize("mode", [None, "native", "native_wide", "native_mc"])
def test_native_kernels_read_mn_major_scales(mode):
    """The native kernels on MN-major scales (a padded leading dimension): the bits of the same call on
    K-major ones. Experts of every kind: decode, small and large, one empty."""
    if "cutlass" not in available_backends():
        pytest.skip("the CUTLASS library is not available here")
    inputs = make_inputs([5, 0, 40, 300, 64], 384, 640, seed=7, device="cuda")
    mn = dict(inputs, a_scale=mn_major(inputs["a_scale"], 412))
    if mode is None:  # the backend's own choice of mode
        got = es_dual.grouped_gemm_fp8(**mn, backend="cutlass")
        want = torch.empty_like(got)
        grouped_gemm_cutlass(**inputs, out=want, mode="native")
    else:
        got, want = (torch.full((409, 384), float("nan"), dtype=torch.bfloat16, device="cuda") for _ in range(2))
        grouped_gemm_cutlass(**mn, out=got, mode=mode)
        grouped_gemm_cutlass(**inputs, out=want, mode=mode)
    assert torch.equal(got, want)


@needs_gpu
def test_auto_takes_mn_major_scales_to_a_backend_that_reads_them():
    problem = Problem(17, 256, 384, 4, torch.bfloat16, torch.device("cuda"), a_scale_ld=20)
    assert not select_backend(problem, "auto").not_supported_reasons(problem)

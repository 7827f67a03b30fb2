"""es_dual.triton_ref.direct: later launches of a planned call skip Triton's binding and lookup, so they
must pick the compiled kernel Triton itself would pick: one per pattern of pointer dtypes and alignments.
(On the CPU every launch goes through Triton's interpreter; these run where the direct path is taken.)"""
import pytest
import torch

import es_dual
from es_dual.accuracy import relative_errors, tolerance
from es_dual.moe.layer import route_by_sort, route_by_rank
from es_dual.reference import run_reference
from es_dual.triton_ref import direct
from support import make_inputs, needs_gpu


@needs_gpu
def test_same_sizes_other_id_dtype_gets_its_own_kernel():
    """route_kernel with the same constants for int32 and then int64 ids (int64 read as int32 would
    interleave the high words), back and forth, each time equal to torch's sort."""
    torch.manual_seed(0)
    ids32 = torch.randint(0, 8, (16, 2), dtype=torch.int32, device="cuda")
    for ids in (ids32, ids32.long(), ids32, ids32.long()):
        got, want = route_by_rank(ids, 8), route_by_sort(ids, 8)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), ids.dtype


@needs_gpu
@pytest.mark.parametrize("backend", ["triton", "cutlass"])
def test_same_sizes_misaligned_scales(backend):
    """A planned GEMM called with 16-byte aligned scales and then with scales 4 bytes off (same sizes):
    the second call needs the kernel compiled without the alignment assumption."""
    if backend not in es_dual.available_backends():
        pytest.skip(f"{backend} is not available here")
    inputs = make_inputs([5, 0, 3, 9], 256, 512, seed=1, device="cuda")
    want = torch.empty(17, 256, dtype=torch.bfloat16, device="cuda")
    run_reference(**inputs, out=want)
    shifted = dict(inputs)
    for name in ("a_scale", "b_scale"):
        t = inputs[name]
        flat = torch.empty(t.numel() + 1, dtype=t.dtype, device="cuda")
        shifted[name] = flat[1:].view(t.shape)
        shifted[name].copy_(t)
    max_tol, rms_tol = tolerance(torch.bfloat16, both_rounded=True)
    for case in (inputs, shifted, inputs, shifted):
        max_rel, rms_rel = relative_errors(es_dual.grouped_gemm_fp8(**case, backend=backend), want)
        assert max_rel <= max_tol and rms_rel <= rms_tol, (max_rel, rms_rel)


@needs_gpu
def test_planned_launches_are_direct_after_the_first():
    """The second call of a planned Triton GEMM reuses the compiled kernel (one entry per pattern)."""
    from es_dual.problem import check_call
    from es_dual.triton_ref.launch import plan_triton

    inputs = make_inputs([4, 4], 128, 256, seed=2, device="cuda")
    out = torch.empty(8, 128, dtype=torch.bfloat16, device="cuda")
    problem, ptrs = check_call(*inputs.values(), out)
    launch = plan_triton(problem)
    tensors = (*inputs.values(), out)
    for _ in range(3):
        launch(ptrs, lambda: tensors)
    if direct.knobs is None:
        pytest.skip("this Triton has no knobs module: every launch goes through kernel[grid]")
    assert len(launch.compiled) == 1

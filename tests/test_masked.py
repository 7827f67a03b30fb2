"""grouped_gemm_fp8_masked: the masked layout (E, max_m, k) with per-expert counts on the device, on every
backend that takes it, against its reference twin; rows past a count are never written; refusals name the
argument."""
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import es_dual
from es_dual.accuracy import relative_errors, tolerance
from es_dual.dispatch import available_backends
from support import needs_gpu

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MASKED_BACKENDS = available_backends(DEVICE)


def _inputs(counts, max_m, n, k, seed=0, dtype=torch.int32):
    g = torch.Generator().manual_seed(seed)
    num_experts = len(counts)
    x = torch.randn(num_experts * max_m, k, generator=g)
    a, a_scale = es_dual.quantize_fp8_per_token_group(x)
    b, b_scale = es_dual.quantize_fp8_per_block(torch.randn(num_experts, n, k, generator=g) * k**-0.5)
    return dict(a=a.view(num_experts, max_m, k).to(DEVICE), a_scale=a_scale.view(num_experts, max_m, -1).to(DEVICE),
                b=b.to(DEVICE), b_scale=b_scale.to(DEVICE), masked_m=torch.tensor(counts, dtype=dtype, device=DEVICE))


def _check(inputs, backend):
    num_experts, max_m, _ = inputs["a"].shape
    n = inputs["b"].shape[1]
    sentinel = -7.0
    out = torch.full((num_experts, max_m, n), sentinel, dtype=torch.bfloat16, device=DEVICE)
    es_dual.grouped_gemm_fp8_masked(**inputs, out=out, backend=backend)
    want = torch.full_like(out, sentinel)
    es_dual.grouped_gemm_fp8_masked_reference(**inputs, out=want)
    max_tol, rms_tol = tolerance(torch.bfloat16, both_rounded=True)
    for e, m in enumerate(inputs["masked_m"].tolist()):
        m = min(max(m, 0), max_m)
        assert bool((out[e, m:] == sentinel).all()), f"expert {e}: a row past its count was written"
        if m:
            max_rel, rms_rel = relative_errors(out[e, :m], want[e, :m])
            assert max_rel <= max_tol and rms_rel <= rms_tol, (e, max_rel, rms_rel)


@pytest.mark.parametrize("backend", MASKED_BACKENDS)
@given(counts=st.lists(st.integers(-3, 40), min_size=1, max_size=6), max_m=st.sampled_from([1, 16, 33]),
       n=st.sampled_from([128, 160]), k=st.sampled_from([128, 272]), int64=st.booleans())
@settings(max_examples=20)
def test_against_reference(backend, counts, max_m, n, k, int64):
    """Counts of zero, of max_m, below zero (taken as 0) and past max_m (taken as max_m)."""
    _check(_inputs(counts, max_m, n, k, dtype=torch.int64 if int64 else torch.int32), backend)


def test_reference_twin_is_the_contiguous_reference():
    """Expert e's rows a[e, :m] through the contiguous reference give the masked reference's out[e, :m]."""
    inputs = _inputs([3, 0, 5], 8, 128, 256)
    masked = es_dual.grouped_gemm_fp8_masked_reference(**inputs)
    rows = [inputs["a"][e, :m] for e, m in enumerate([3, 0, 5])]
    scales = [inputs["a_scale"][e, :m] for e, m in enumerate([3, 0, 5])]
    offsets = torch.tensor([0, 3, 3, 8], dtype=torch.int32, device=DEVICE)
    contiguous = es_dual.grouped_gemm_fp8_reference(torch.cat(rows), torch.cat(scales), inputs["b"], inputs["b_scale"], offsets)
    assert torch.equal(torch.cat([masked[0, :3], masked[2, :5]]), contiguous)


def test_refusals_name_the_argument():
    inputs = _inputs([2, 1], 4, 128, 128)
    cases = [
        (dict(masked_m=inputs["masked_m"][:1]), ValueError, "masked_m: expected shape (2,)"),
        (dict(masked_m=inputs["masked_m"].float()), TypeError, "masked_m: expected dtype torch.int32 or torch.int64"),
        (dict(a=inputs["a"][0]), ValueError, "a: expected 3 dimensions (num_experts, max_m, k)"),
        (dict(a_scale=inputs["a_scale"][:, :2].contiguous()), ValueError, "a_scale: expected shape (2, 4, 1)"),
    ]
    for edit, exc, message in cases:
        with pytest.raises(exc, match=re.escape(message)):
            es_dual.grouped_gemm_fp8_masked(**dict(inputs, **edit))


def test_fast_check_accepts_exactly_what_the_rules_accept():
    """The per-call fast path (problem._conforming) gives the rules' Problem on a valid call and None (the
    rules then raise) on each broken one."""
    from es_dual.problem import _conforming, check_masked_inputs

    inputs = _inputs([2, 1, 4], 4, 128, 256)
    out = torch.empty(3, 4, 128, dtype=torch.bfloat16, device=DEVICE)
    problem, ptrs = _conforming(*inputs.values(), out, masked=True)
    assert problem == check_masked_inputs(**inputs, out=out) and problem.max_m == 4 and problem.total_m == 12
    assert ptrs[4] == inputs["masked_m"].data_ptr()
    broken = [
        dict(masked_m=inputs["masked_m"][:2]), dict(a=inputs["a"][:2]), dict(a_scale=inputs["a_scale"][:, :3]),
        dict(masked_m=inputs["masked_m"].float()), dict(out=out[:, :3]), dict(out=out.transpose(0, 1)),
        dict(out=out.float()),
        dict(out=inputs["b"].view(torch.uint8).view(-1)[:out.numel() * 2].view(torch.bfloat16).view(3, 4, 128)),
    ]
    for edit in broken:
        args = {**inputs, "out": out, **edit}
        assert _conforming(*args.values(), masked=True) is None, edit


def test_validation_mode_names_the_bad_count():
    inputs = _inputs([2, 9], 4, 128, 128)
    with pytest.raises(ValueError, match=re.escape("masked_m: expected counts in [0, 4] (max_m), got 9 at index 1")):
        es_dual.grouped_gemm_fp8_masked(**inputs, validate=True)


@needs_gpu
def test_graph_replay_follows_new_counts():
    inputs = _inputs([5, 2, 0, 7], 8, 128, 256)
    out = torch.zeros(4, 8, 128, dtype=torch.bfloat16, device=DEVICE)
    es_dual.grouped_gemm_fp8_masked(**inputs, out=out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        es_dual.grouped_gemm_fp8_masked(**inputs, out=out)
    inputs["masked_m"].copy_(torch.tensor([1, 8, 3, 0], dtype=torch.int32))
    out.zero_()
    graph.replay()
    want = es_dual.grouped_gemm_fp8_masked_reference(**inputs)
    for e, m in enumerate([1, 8, 3, 0]):
        assert bool((out[e, m:] == 0).all())
        if m:
            assert relative_errors(out[e, :m], want[e, :m])[0] <= tolerance(torch.bfloat16, both_rounded=True)[0]

"""Column stripes (Problem.stripe_cols): the grouped GEMM counts, per column stripe of out, the rows it has
stored, so that the MoE layer's weighted un-permute can sum each stripe beside the down GEMM as soon as the
stripe is complete (es_dual.moe.kernels.unpermute_stripes_kernel). The reference counts (every row, once
computed) and so does the CUTLASS backend in its native mode (tile by tile, each count released at GPU
scope after the tile's stores); the Triton kernel and cutlass_single say they do not. A counting call
gives the bits of the same call without counting, and every counter ends at what it held plus the rows of
all experts."""
import dataclasses

import pytest
import torch

from es_dual.cutlass import buckets
from es_dual.cutlass.launch import es_mode_of
from es_dual.dispatch import BACKENDS, available_backends, select_backend
from es_dual.problem import Problem, cdiv
from support import make_inputs, needs_gpu, poisoned_out

# the backends of this machine that count stripes
COUNTING = tuple(b for b in available_backends() if b in ("cutlass", "reference"))


def _on_cpu_terms(name):
    """BACKENDS[name] replayed on CPU terms, so that only its reasons about the problem are left."""
    return dataclasses.replace(BACKENDS[name], device_types=("cpu",), availability=lambda device: [],
                               min_capability=None, max_capability=None)


def test_backends_say_whether_they_count_stripes():
    problem = Problem(40, 256, 384, 4, torch.bfloat16, torch.device("cpu"), stripe_cols=128, spare_sms=8)
    assert es_mode_of(problem) == "native"
    assert _on_cpu_terms("cutlass").not_supported_reasons(problem) == []
    assert _on_cpu_terms("cutlass").not_supported_reasons(problem._replace(stripe_cols=64)) == [
        "counts column stripes of 64 columns for torch.bfloat16 output only, in a native mode of that weight tile "
        "width; this call's mode is native (stripes of 128) and its output torch.bfloat16"]
    compute_bound = problem._replace(total_m=8 * 4096, num_experts=8, n=4096, k=7168)  # native_mc: 2-CTA clusters
    assert _on_cpu_terms("cutlass").not_supported_reasons(compute_bound) == [
        "counts column stripes of 128 columns for torch.bfloat16 output only, in a native mode of that weight tile "
        "width; this call's mode is native_mc (stripes of 0) and its output torch.bfloat16"]
    assert "its output torch.float16" in _on_cpu_terms("cutlass").not_supported_reasons(
        problem._replace(out_dtype=torch.float16))[0]
    assert _on_cpu_terms("cutlass").not_supported_reasons(problem._replace(a_rows=10)) == [
        "counts column stripes or gathers rows, not both in one call"]
    assert _on_cpu_terms("cutlass_single").not_supported_reasons(problem) == [
        "counts no column stripes (one CUTLASS kernel)"]
    assert _on_cpu_terms("triton").not_supported_reasons(problem) == ["counts no column stripes"]
    assert _on_cpu_terms("reference").not_supported_reasons(problem) == []
    for name in BACKENDS:
        assert "counts column stripes in the contiguous layout only, not the masked one" in _on_cpu_terms(
            name).not_supported_reasons(problem._replace(max_m=10))


def test_stripe_widths_of_the_modes():
    """Only a native mode whose kinds share one weight tile width and whose cluster tiles are one token chunk
    each (1-CTA clusters, or pairs of weight tiles) counts stripes (the kernel's Mode::kStripeCols)."""
    widths = {mode: buckets.stripe_cols(mode) for mode, _ in (*buckets.MODES, *buckets.TUNING_MODES)}
    assert {mode: width for mode, width in widths.items() if width} == {
        "native": 128, "native_mt": 128, "native_m192t": 128}


def _counted_and_plain(counts, n, k, device, backend, spare_sms=0, base=5, mode=None):
    """(out of the counting call, its counters, out of the same call without counting, the rows of experts):
    7 rows past the last expert that no call may write; the counters start at `base`. mode: the CUTLASS
    backend's mode for both calls (default: its own choice)."""
    from es_dual.cutlass.launch import plan_cutlass

    inputs = make_inputs(counts, n, k, seed=21, device=device)
    total_m, num_experts = sum(counts), len(counts)
    rows = total_m + 7
    offsets = inputs["expert_offsets"]
    # 7 rows past the experts: a and a_scale with room for them, the offsets ending at total_m
    a = torch.cat([inputs["a"], inputs["a"][:7]])
    a_scale = torch.cat([inputs["a_scale"], inputs["a_scale"][:7]])
    outs = []
    counters = torch.full((cdiv(n, 128),), base, dtype=torch.int32, device=device)
    for stripes in (True, False):
        problem = Problem(rows, n, k, num_experts, torch.bfloat16, a.device,
                          stripe_cols=128 if stripes else 0, spare_sms=spare_sms if stripes else 0)
        out = poisoned_out(rows, n, torch.bfloat16, device)
        tensors = (a, a_scale, inputs["b"], inputs["b_scale"], offsets, out, *((counters,) if stripes else ()))
        plan = plan_cutlass(problem, torch.int32, mode) if mode else select_backend(problem, backend).plan(
            problem, torch.int32)
        plan(tuple(t.data_ptr() for t in tensors), lambda: tensors)
        outs.append(out)
    return outs[0], counters, outs[1], total_m


@pytest.mark.parametrize("backend", COUNTING)
def test_counting_calls_give_the_same_bits_and_count_every_row(device, backend):
    """Experts of every kind of the native mode (decode, small, large; one empty), n not a multiple of 128
    (a last stripe of 16 columns), k = 384 and 256: the bits of the call that does not count, rows of no
    expert not written, and each counter at its base plus every expert's rows."""
    on_gpu = device.type == "cuda"
    counts = [5, 0, 40, 300, 64, 129] if on_gpu else [5, 0, 17, 3]
    for n, k in ((1040, 384), (400, 256)) if on_gpu else ((144, 256),):
        for spare_sms in (0, 16) if backend == "cutlass" else (0,):
            got, counters, want, total_m = _counted_and_plain(counts, n, k, device, backend, spare_sms)
            if on_gpu:
                torch.cuda.synchronize()
            assert torch.equal(got[:total_m].cpu(), want[:total_m].cpu()), (n, k, spare_sms)
            assert got[total_m:].isnan().all(), "rows of no expert were written"
            assert counters.tolist() == [5 + total_m] * cdiv(n, 128), (n, k, spare_sms)


@needs_gpu
@pytest.mark.parametrize("mode", ["native", "native_mt"])
def test_native_modes_count_stripes(mode):
    """Each native mode with stripes: 1-CTA tiles, and 2-CTA pairs of weight tiles (two stripes of one chunk;
    an odd last pair's spare tile counts nothing: n = 1040 is 9 stripes)."""
    if "cutlass" not in available_backends():
        pytest.skip("the CUTLASS library is not available here")
    counts = [5, 0, 40, 300, 64, 129]
    for n, k, spare_sms in ((1040, 384, 0), (1040, 384, 16), (512, 7168, 8)):
        got, counters, want, total_m = _counted_and_plain(counts, n, k, "cuda", "cutlass", spare_sms, mode=mode)
        torch.cuda.synchronize()
        assert torch.equal(got[:total_m], want[:total_m]), (n, k, spare_sms)
        assert got[total_m:].isnan().all(), "rows of no expert were written"
        assert counters.tolist() == [5 + total_m] * cdiv(n, 128), (n, k, spare_sms)


@needs_gpu
def test_native_mode_refuses_stripes_it_cannot_count():
    """A stripe width other than the mode's weight tile rows is refused by the library, not miscounted."""
    if "cutlass" not in available_backends():
        pytest.skip("the CUTLASS library is not available here")
    from es_dual.cutlass.launch import plan_cutlass

    inputs = make_inputs([5, 40], 256, 384, seed=3, device="cuda")
    out = poisoned_out(45, 256, torch.bfloat16, "cuda")
    counters = torch.zeros(4, dtype=torch.int32, device="cuda")
    tensors = (inputs["a"], inputs["a_scale"], inputs["b"], inputs["b_scale"], inputs["expert_offsets"], out, counters)
    for mode, stripe_cols, message in (("native", 64, "stripe_cols differs from the mode's weight tile rows"),
                                       ("native_mc", 128, "column stripes are compiled for bfloat16 output and")):
        problem = Problem(45, 256, 384, 2, torch.bfloat16, out.device, stripe_cols=stripe_cols)
        with pytest.raises(RuntimeError, match=message):
            plan_cutlass(problem, torch.int32, mode)(tuple(t.data_ptr() for t in tensors), lambda: tensors)
    torch.cuda.synchronize()
    assert out.isnan().all() and not counters.any()

"""The CUTLASS backend on a Hopper GPU: against the float64 reference and bit for bit against Triton.

Skipped without a compute-capability-9.0 GPU. Token counts come from hypothesis (zeros, ones, every bucket
boundary of es_dual/cutlass/buckets.py +-1, one expert with everything, heavy skew); shapes from a fixed
menu; tensor contents from a drawn seed.

Tolerance (support.assert_close -> es_dual.accuracy.tolerance): the kernel multiplies FP8 in the tensor
cores and promotes every 128-wide K block to float32 with its two scales (the blockwise mainloop's
promotion interval is one K tile), so its error against a float64 reference is the final rounding to the
output dtype plus float32 summation-order noise: max error <= 2u * max|ref| and RMS <= u * ||ref||
(u = 2^-8 for bf16, 2^-11 for fp16). A wrong scale index or a row written by the wrong expert is far
outside that; exactly representable inputs catch what a tolerance would average away.
"""
from __future__ import annotations


import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import es_dual
from es_dual.bench.workloads import seed_skew
from es_dual.cutlass import buckets, loader
from es_dual.cutlass.launch import grouped_gemm_cutlass, plan_cutlass
from es_dual.problem import Problem
from support import assert_close, assert_matches, offsets_of, poisoned_out, reference64, routings, run_backend
from support import make_inputs as support_make_inputs

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
pytestmark = pytest.mark.skipif(not HOPPER, reason="needs a compute capability 9.0 GPU (the library is sm_90a)")

# "native*": the modes of es_dual's own kernels (csrc/native_gemm.cuh), through the launcher
NATIVE_MODES = ("native", "native_wide", "native_mc")
BACKENDS = ("cutlass", "cutlass_single", *NATIVE_MODES)
MODE_OF = {"cutlass": None, "cutlass_single": "single", **{m: m for m in NATIVE_MODES}}  # None: the production table for k
OVERLAPS = (None, *buckets.OVERLAPS)  # None: through the public API (production default overlap)
OUT_DTYPES = (torch.bfloat16, torch.float16)
# bucket boundaries from the table, plus the token chunk edges of the large kinds (128 and 192 rows, and
# their pairs in 2-CTA modes)
BOUNDARIES = tuple(sorted(set(buckets.boundaries()) | {128, 192, 256, 384}))
N_CHOICES = (128, 256, 384, 768)  # 384 and 768: a partial cluster of 256-row swap-AB tiles
K_CHOICES = (128, 256, 384, 1024, 2048)


def make_inputs(counts, n, k, seed, exact=False):
    return support_make_inputs(counts, n, k, seed, "cuda", exact=exact)


def run(inputs, out_dtype, backend, overlap=None):
    """Through the public API (a backend, overlap None), else through the launcher with that overlap."""
    if overlap is None and backend in es_dual.dispatch.BACKENDS:
        return run_backend(inputs, out_dtype, backend)
    return run_mode(inputs, out_dtype, MODE_OF[backend], overlap)


def run_mode(inputs, out_dtype, mode, overlap):
    out = poisoned_out(inputs["a"].shape[0], inputs["b"].shape[1], out_dtype, "cuda")
    grouped_gemm_cutlass(**inputs, out=out, mode=mode, overlap=overlap)
    return out


# --- against the float64 reference -------------------------------------------------------------------

@given(
    counts=routings(64, 600, BOUNDARIES),
    n=st.sampled_from(N_CHOICES),
    k=st.sampled_from(K_CHOICES),
    out_dtype=st.sampled_from(OUT_DTYPES),
    backend=st.sampled_from(BACKENDS),
    overlap=st.sampled_from(OVERLAPS),
    offsets_dtype=st.sampled_from([torch.int32, torch.int64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference(counts, n, k, out_dtype, backend, overlap, offsets_dtype, seed):
    inputs = make_inputs(counts, n, k, seed)
    inputs["expert_offsets"] = inputs["expert_offsets"].to(offsets_dtype)
    assert_matches(run(inputs, out_dtype, backend, overlap), reference64(inputs))


@given(
    counts=routings(64, 600, BOUNDARIES),
    n=st.sampled_from((128, 384)),
    k=st.sampled_from((128, 384, 1024, 2048)),
    out_dtype=st.sampled_from(OUT_DTYPES),
    backend=st.sampled_from(BACKENDS),
    seed=st.integers(0, 2**31 - 1),
)
def test_exact_inputs_bit_equal_to_triton_and_reference(counts, n, k, out_dtype, backend, seed):
    inputs = make_inputs(counts, n, k, seed, exact=True)
    got = run(inputs, out_dtype, backend)
    assert torch.equal(got, run(inputs, out_dtype, "triton"))
    assert torch.equal(got, run(inputs, out_dtype, "reference"))


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_every_bucket_boundary(boundary, backend, out_dtype):
    """Experts at each routing boundary -1/0/+1 side by side, with empty and one-token experts between."""
    counts = [boundary - 1, 0, boundary, 1, boundary + 1, 0, boundary]
    inputs = make_inputs(counts, 384, 384, seed=boundary, exact=True)
    got = run(inputs, out_dtype, backend)
    assert torch.equal(got, run(inputs, out_dtype, "triton"))
    assert_matches(got, reference64(inputs))


# --- extremes ------------------------------------------------------------------------------------------

EXTREMES = {
    "one_expert_1": [1],
    "one_expert_32": [32],
    "one_expert_33": [33],
    "one_expert_1000": [1000],
    "all_tokens_in_one": [0, 0, 0, 777, 0, 0, 0, 0],
    "all_tokens_in_last": [0] * 63 + [300],
    "e512_seed_skew": seed_skew(512),
    "e512_mostly_empty": [0] * 200 + [5] + [0] * 250 + [70] + [0] * 60,
    "e512_one_each": [1] * 512,
}


@pytest.mark.parametrize("name", list(EXTREMES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_routings(name, backend):
    counts = EXTREMES[name]
    inputs = make_inputs(counts, 256, 512, seed=len(counts))
    assert_matches(run(inputs, torch.bfloat16, backend), reference64(inputs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_tokens_at_all(backend):
    inputs = make_inputs([0] * 5, 128, 128, seed=0)
    out = run(inputs, torch.bfloat16, backend)
    assert out.shape == (0, 128)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_in_its_experts_rows(backend):
    """NaN in one expert's activation scales reaches that expert's rows and no other: the scale rows of
    the neighbouring experts are never read into (or written from) another expert's tile."""
    counts = [5, 0, 9, 3, 40, 1]
    inputs = make_inputs(counts, 256, 256, seed=7)
    inputs["a_scale"][5:14] = float("nan")  # expert 2's rows
    out = run(inputs, torch.bfloat16, backend).cpu()
    assert out[5:14].isnan().all()
    assert not out[:5].isnan().any() and not out[14:].isnan().any()


# --- public workloads (DESIGN.md), at full size --------------------------------------------------------

WORKLOADS = {  # name: (n, k, experts)
    "ds_down_prefill": (7168, 256, 256),
    "qwen_gateup": (768, 4096, 128),
    "ds_decode_ep16": (4096, 7168, 16),
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_public_workloads(workload, backend):
    n, k, experts = WORKLOADS[workload]
    inputs = make_inputs(seed_skew(experts), n, k, seed=3)
    assert_close(run(inputs, torch.bfloat16, backend), reference64(inputs))


def test_close_to_unquantized_product():
    """End to end against bf16-free float math on the unquantized inputs (DeepGEMM's measure)."""
    g = torch.Generator(device="cuda").manual_seed(11)
    counts = seed_skew(32)
    x = torch.randn(sum(counts), 2048, generator=g, device="cuda")
    w = torch.randn(32, 1024, 2048, generator=g, device="cuda")
    a, a_scale = es_dual.quantize_fp8_per_token_group(x)
    b, b_scale = es_dual.quantize_fp8_per_block(w)
    offs = offsets_of(counts, "cuda")
    out = es_dual.grouped_gemm_fp8(a, a_scale, b, b_scale, offs, backend="cutlass").double()
    ref = torch.cat([x[offs[e] : offs[e + 1]].double() @ w[e].double().T for e in range(32)])
    diff = 1 - 2 * (out * ref).sum() / (out * out + ref * ref).sum()
    assert diff.item() < 1e-3


# --- CUDA graphs ---------------------------------------------------------------------------------------

def _call(inputs, out, backend, overlap):
    if overlap is None and backend in es_dual.dispatch.BACKENDS:
        es_dual.grouped_gemm_fp8(**inputs, out=out, backend=backend)
    else:
        grouped_gemm_cutlass(**inputs, out=out, mode=MODE_OF[backend], overlap=overlap)


@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_replay_after_routing_and_inputs_change(backend, overlap):
    """Capture one call, then change expert_offsets' contents (experts move between buckets) and the
    inputs, replay, and compare with the reference of the new inputs. overlap=1 captures the fork/join
    over the library's internal streams, overlap=2 programmatic launches."""
    first = [40, 0, 1, 100, 5, 33, 0, 64]
    second = [0, 100, 33, 12, 1, 65, 32, 0]
    assert sum(first) == sum(second)
    inputs = make_inputs(first, 384, 512, seed=1)
    out = poisoned_out(sum(first), 384, torch.bfloat16, "cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture (library load, kernel attributes, streams)
        _call(inputs, out, backend, overlap)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _call(inputs, out, backend, overlap)

    new = make_inputs(second, 384, 512, seed=2)
    for name, t in inputs.items():
        t.copy_(new[name])
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert_matches(out, reference64(new))


# --- what the backend claims ---------------------------------------------------------------------------

@pytest.mark.parametrize("n,k", [(136, 128), (128, 144), (200, 400), (520, 2064), (4104, 7184)])
@pytest.mark.parametrize("mode", ["es", "single", *NATIVE_MODES])
def test_tails(n, k, mode):
    """n % 128 != 0 and k % 128 != 0 (the blockwise mainloop's partial tiles and scale blocks), through
    the launcher, so it holds whatever limits.N_MULTIPLE / K_MULTIPLE claim."""
    counts = [3, 0, 40, 70, 1, 200]
    inputs = make_inputs(counts, n, k, seed=n + k)
    out = run_mode(inputs, torch.bfloat16, mode, overlap=0)
    torch.cuda.synchronize()
    assert_matches(out, reference64(inputs))


@pytest.mark.parametrize("mode", NATIVE_MODES)
def test_native_k_past_32768(mode):
    """k of more than 256 K blocks (each block's weight scales come with its stage; nothing in shared memory
    grows with k), with a tail in k and n, an expert of a full and a partial 128-row chunk (a full tile of
    a 192-wide kind leaves by TMA stores, clipped at n; a partial one by the store warps)."""
    counts = [3, 0, 200, 70]
    inputs = make_inputs(counts, 520, 32768 + 144, seed=11)
    out = run_mode(inputs, torch.bfloat16, mode, overlap=0)
    torch.cuda.synchronize()
    assert_matches(out, reference64(inputs))


# --- every compiled mode (a tuning build has more), every overlap ----------------------------------------

def _compiled_modes():
    if not HOPPER:
        return []
    return json.loads(loader.load_library().es_dual_table_json())


@pytest.mark.parametrize("overlap", list(buckets.OVERLAPS))
@pytest.mark.parametrize("mode", [m["mode"] for m in _compiled_modes()] or ["es"])
def test_every_compiled_mode(mode, overlap):
    """Experts at each boundary of the mode's own table -1/0/+1 and around the 128- and 192-token tiles, bf16
    (every mode has bf16 kernels), bit-equal to Triton on exact inputs."""
    table = next(m for m in _compiled_modes() if m["mode"] == mode)
    bounds = sorted({b["max_tokens"] for b in table["buckets"] if b["max_tokens"]} | {128, 192})
    counts = [0, 1] + [c for b in bounds for c in (b - 1, b, b + 1)] + [0, 300, 384]
    inputs = make_inputs(counts, 384, 384, seed=len(counts), exact=True)
    got = run_mode(inputs, torch.bfloat16, mode, overlap)
    assert torch.equal(got, run(inputs, torch.bfloat16, "triton"))
    assert_matches(got, reference64(inputs))


@pytest.mark.parametrize("overlap", list(buckets.OVERLAPS))
@pytest.mark.parametrize("mode", [m["mode"] for m in _compiled_modes()] or ["es"])
def test_every_compiled_mode_masked(mode, overlap):
    """The masked layout in every mode: counts at each boundary of the mode's table -1/0/+1, 0, max_m, and
    past both ends (clamped to 0 and max_m); bit-equal to the masked reference on exact inputs, and no row
    past a count written."""
    table = next(m for m in _compiled_modes() if m["mode"] == mode)
    bounds = sorted({b["max_tokens"] for b in table["buckets"] if b["max_tokens"]} | {128})
    max_m = bounds[-1] + 8
    counts = [0, 1, -5, max_m, max_m + 40] + [c for b in bounds for c in (b - 1, b, b + 1)]
    flat = make_inputs([max_m] * len(counts), 384, 384, seed=len(counts), exact=True)
    num_experts = len(counts)
    masked_m = torch.tensor(counts, dtype=torch.int32, device="cuda")
    a = flat["a"].view(num_experts, max_m, -1)
    a_scale = flat["a_scale"].view(num_experts, max_m, -1)
    out = poisoned_out(num_experts * max_m, 384, torch.bfloat16, "cuda").view(num_experts, max_m, 384)
    problem = Problem(num_experts * max_m, 384, 384, num_experts, torch.bfloat16, a.device, max_m)
    tensors = (a, a_scale, flat["b"], flat["b_scale"], masked_m, out)
    plan_cutlass(problem, torch.int32, mode, overlap)(tuple(t.data_ptr() for t in tensors), lambda: tensors)
    want = es_dual.grouped_gemm_fp8_masked_reference(a, a_scale, flat["b"], flat["b_scale"], masked_m)
    for e, m in enumerate(counts):
        m = min(max(m, 0), max_m)
        assert torch.equal(out[e, :m], want[e, :m]), (mode, e, m)
        assert bool(out[e, m:].isnan().all()), f"mode {mode}: expert {e} wrote a row past its count {m}"


def test_cached_launch_state_follows_its_key():
    """The library keeps initialized kernel state per (workspace, problem-size array, experts, ...) in
    a few slots per thread; cycling through more problems than slots, with different workspaces and
    expert counts, must re-initialize whenever the key changes and never reuse a stale one."""
    problems = [make_inputs(counts, 256, 256, seed=i)
                for i, counts in enumerate([[5, 70], [1, 0, 33], [40] * 5, [0, 200, 3, 64], [7] * 9, [65, 1, 1]])]
    refs = [reference64(p) for p in problems]
    keep = []  # hold some workspaces' neighbours alive so the allocator hands out different addresses
    for round_ in range(3):
        for overlap in buckets.OVERLAPS:
            for p, ref in zip(problems, refs):
                assert_matches(run_mode(p, torch.bfloat16, "es", overlap), ref)
                keep.append(torch.empty(1 << (10 + round_), dtype=torch.uint8, device="cuda"))

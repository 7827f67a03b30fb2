"""Reliability on the GPU: fuzzing at scale, bit-exact agreement, isolation, 64-bit sizes, determinism.

Run at scale with HYPOTHESIS_PROFILE=fuzz (5,000 examples per backend, 1,000 bit-exact cases) and
pytest-xdist: each fuzz test is split into FUZZ_SHARDS independent hypothesis runs that share its
example budget, so the shards run in parallel. docs/reliability.md gives the commands and the figures.
Every test needs a CUDA GPU; the CPU side of these properties is covered by test_triton.py and
test_validation.py under the interpreter.
"""
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import es_dual
from es_dual.cutlass import buckets
from es_dual.dispatch import available_backends
from es_dual.triton_ref.launch import TILE_CONFIGS
from support import ROUTING_KINDS, assert_matches, make_inputs, offsets_of, reference64, routings, run_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = torch.device("cuda", 0) if torch.cuda.is_available() else None
FAST = [b for b in ("cutlass", "cutlass_single", "triton") if GPU is not None and b in available_backends(GPU)]
# every boundary where a backend changes tile or bucket: the CUTLASS buckets and the Triton row tiles
BOUNDARIES = tuple(sorted(set(buckets.boundaries()) | {c.block_m for c in TILE_CONFIGS} | {128, 256}))
EDGES = frozenset(b + d for b in BOUNDARIES for d in (-1, 0, 1))
MAX_EXPERTS, MAX_TOKENS, MAX_TOTAL = 1024, 4096, 65536
FUZZ_N = (128, 256, 384, 1024)
FUZZ_K = (128, 256, 512, 1024, 2064)
# E * n * k at most 2^27 weight elements: 1024 experts up to n * k = 2^17, fewer for larger experts. It
# bounds a case's memory (the float32 weights are generated whole) so that the shards fit on one GPU
# side by side; weights past 2^31 elements are test_offsets_past_2_pow_31_elements's job.
WEIGHT_BUDGET = 2**27
# Each shard is its own hypothesis run (its own random cases) with 1/FUZZ_SHARDS of the profile's examples.
FUZZ_SHARDS = 4


def per_shard(examples: int) -> settings:
    return settings(max_examples=max(1, examples // FUZZ_SHARDS))


@st.composite
def fuzz_problems(draw):
    """(counts, n, k): mostly moderate expert counts, a fifth of the cases up to 1024 experts (within the
    weight budget), totals up to 65,536 rows."""
    n, k = draw(st.sampled_from(FUZZ_N)), draw(st.sampled_from(FUZZ_K))
    many = draw(st.integers(0, 4)) == 0
    max_experts = min(MAX_EXPERTS if many else 64, WEIGHT_BUDGET // (n * k))
    # A routing with no rows at all returns before any kernel runs (tested in test_triton.py and
    # test_cutlass_lib.py): here it would only take a fifth of the cases.
    kinds = tuple(kind for kind in ROUTING_KINDS if kind != "all_empty")
    return draw(routings(max_experts, MAX_TOKENS, BOUNDARIES, max_total=MAX_TOTAL, kinds=kinds)), n, k


def record_coverage(counts) -> None:
    """Hypothesis events (shown by --hypothesis-show-statistics): how much of the space the cases reach."""
    experts, rows = len(counts), sum(counts)
    event("experts " + ("1-64" if experts <= 64 else "65-512" if experts <= 512 else "513-1024"))
    event("rows " + ("0" if rows == 0 else "1-4096" if rows <= 4096 else "4097-32768" if rows <= 32768 else "32769-65536"))
    if EDGES.intersection(counts):
        event("an expert at a bucket or tile boundary +-1")
    if 0 in counts and rows:
        event("empty experts among others")
    if rows and max(counts) == rows and experts > 1:
        event("one expert has every row")


@pytest.mark.parametrize("shard", range(FUZZ_SHARDS))
@pytest.mark.parametrize("backend", FAST)
@per_shard(settings.default.max_examples)
@given(problem=fuzz_problems(), out_dtype=st.sampled_from([torch.bfloat16, torch.float16]),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_against_reference(backend, shard, problem, out_dtype, seed):
    counts, n, k = problem
    record_coverage(counts)
    inputs = make_inputs(counts, n, k, seed, GPU)
    assert_matches(run_backend(inputs, out_dtype, backend), reference64(inputs))


@pytest.mark.parametrize("shard", range(FUZZ_SHARDS))
@per_shard(min(settings.default.max_examples, 1000))  # each case runs every backend
@given(problem=fuzz_problems(), seed=st.integers(0, 2**31 - 1))
def test_fuzz_exact_inputs_bit_equal_across_backends(shard, problem, seed):
    counts, n, k = problem
    record_coverage(counts)
    inputs = make_inputs(counts, n, k, seed, GPU, exact=True)
    expected = run_backend(inputs, torch.bfloat16, "reference")
    for backend in FAST:
        assert torch.equal(run_backend(inputs, torch.bfloat16, backend), expected), backend


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("poison", ["a", "a_scale", "b", "b_scale"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_stays_in_its_expert(backend, poison, value):
    """NaN or Inf in one expert's tokens, token scales, weights or weight scales reaches that expert's
    rows and no other row."""
    counts = [37, 0, 70, 5, 300, 1]
    if poison in ("a", "b") and value == float("inf"):
        pytest.skip("float8_e4m3fn has no infinity; NaN covers the FP8 data")
    inputs = make_inputs(counts, 256, 512, seed=3, device=GPU)
    offs = offsets_of(counts, "cpu").tolist()
    e = 2  # the poisoned expert
    rows = slice(offs[e], offs[e + 1])
    if poison in ("a", "a_scale"):
        inputs[poison][rows] = value
    else:
        inputs[poison][e] = value
    out = run_backend(inputs, torch.bfloat16, backend).cpu()
    mine = torch.zeros(out.shape[0], dtype=torch.bool)
    mine[rows] = True
    assert not torch.isfinite(out[mine]).all(), "the poisoned expert's rows should not be finite"
    assert torch.isfinite(out[~mine]).all(), "a non-finite value leaked into another expert's rows"


@pytest.mark.parametrize("backend", FAST)
def test_two_calls_are_bit_identical(backend):
    inputs = make_inputs([0, 1, 33, 64, 65, 129, 700, 0, 12], 1024, 2048, seed=9, device=GPU)
    first = run_backend(inputs, torch.bfloat16, backend)
    second = run_backend(inputs, torch.bfloat16, backend)
    assert torch.equal(first, second)


def _rows_reference(inputs, rows_of_expert) -> dict:
    """float64 reference for a few rows of some experts only (full references do not fit these sizes)."""
    from es_dual.quant import dequantize_per_block, dequantize_per_token_group

    result = {}
    for e, rows in rows_of_expert.items():
        w = dequantize_per_block(inputs["b"][e], inputs["b_scale"][e]).double()
        x = dequantize_per_token_group(inputs["a"][rows], inputs["a_scale"][rows]).double()
        result[e] = (rows, x @ w.T)
    return result


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", ["weights_past_2G", "tokens_past_2G"])
def test_offsets_past_2_pow_31_elements(backend, case):
    """E * n * k > 2^31 (the last expert's weights start past 2 GiB) and total_m * k > 2^31 (the last
    rows of a start past 2 GiB): 32-bit element offsets would wrap and read the wrong memory."""
    if case == "weights_past_2G":
        num_experts, n, k = 70, 4096, 7680  # 70 * 4096 * 7680 = 2.2e9 elements
        counts = [0] * (num_experts - 2) + [40, 3]
    else:
        num_experts, n, k = 4, 256, 7168
        counts = [1, 0, 300_000, 3]  # total_m * k = 2.15e9
    g = torch.Generator(device=GPU).manual_seed(1)
    total_m = sum(counts)
    a = torch.randint(-8, 9, (total_m, k), generator=g, device=GPU, dtype=torch.int8).to(torch.float8_e4m3fn)
    b = torch.randint(-8, 9, (num_experts, n, k), generator=g, device=GPU, dtype=torch.int8).to(torch.float8_e4m3fn)
    inputs = dict(
        a=a, a_scale=torch.rand(total_m, k // 128, generator=g, device=GPU) + 0.5,
        b=b, b_scale=torch.rand(num_experts, n // 128, k // 128, generator=g, device=GPU) + 0.5,
        expert_offsets=offsets_of(counts, GPU),
    )
    out = run_backend(inputs, torch.bfloat16, backend)
    offs = offsets_of(counts, "cpu").tolist()
    # the last two experts with tokens: the highest weight addresses and the highest rows (at most 64 each)
    checked = [e for e, c in enumerate(counts) if c][-2:]
    rows_of_expert = {e: slice(max(offs[e], offs[e + 1] - 64), offs[e + 1]) for e in checked}
    for e, (rows, ref) in _rows_reference(inputs, rows_of_expert).items():
        got = out[rows].double()
        rel = ((got - ref).norm() / ref.norm()).item()
        assert rel < 2.0**-8, f"expert {e}: relative error {rel:.3g}"

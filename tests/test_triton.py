from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import es_dual
from es_dual.problem import Problem, check_inputs
from es_dual.triton_ref import launch
from es_dual.triton_ref.launch import (
    DECODE_TILE, TILE_CONFIGS, TRITON_BUCKETS, TRITON_TWO_KINDS, LaunchSequence, TritonBucket, choose_config,
    grouped_gemm_triton, plan_triton, plan_two_kinds,
)
from support import assert_matches, make_inputs, needs_gpu, poisoned_out, reference64, routings, run_backend

ON_GPU = torch.cuda.is_available()
# The interpreter runs every program in numpy: CI shapes stay small; the GPU takes larger ones.
N_CHOICES = (16, 48, 128, 144, 256) + ((512, 784) if ON_GPU else ())
K_CHOICES = (16, 112, 128, 160, 384) + ((1024, 2064) if ON_GPU else ())
MAX_EXPERTS = 64 if ON_GPU else 8
MAX_TOKENS = 600 if ON_GPU else 140
BOUNDARIES = tuple(sorted({c.block_m for c in TILE_CONFIGS} | {b.max_rows for b in TRITON_BUCKETS[:-1]}))
OUT_DTYPES = (torch.bfloat16, torch.float16)


def _run(inputs, out_dtype, backend="triton"):
    return run_backend(inputs, out_dtype, backend)


@pytest.mark.parametrize("num_experts", [1, 3])
def test_zero_tokens_returns_empty(device, num_experts):
    inputs = make_inputs([0] * num_experts, 48, 128, seed=0, device=device)
    out = es_dual.grouped_gemm_fp8(**inputs, backend="triton")
    assert out.shape == (0, 48) and out.dtype == torch.bfloat16


@pytest.mark.parametrize("counts", [[1], [0, 1], [1, 0], [0, 0, 17, 0], [16, 16], [17, 15, 0, 33]])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_small_routings(device, counts, out_dtype):
    inputs = make_inputs(counts, 144, 160, seed=len(counts), device=device)
    assert_matches(_run(inputs, out_dtype), reference64(inputs))


@given(
    counts=routings(MAX_EXPERTS, MAX_TOKENS, BOUNDARIES),
    n=st.sampled_from(N_CHOICES),
    k=st.sampled_from(K_CHOICES),
    out_dtype=st.sampled_from(OUT_DTYPES),
    offsets_dtype=st.sampled_from([torch.int32, torch.int64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_triton_against_reference(device, counts, n, k, out_dtype, offsets_dtype, seed):
    inputs = make_inputs(counts, n, k, seed, device)
    inputs["expert_offsets"] = inputs["expert_offsets"].to(offsets_dtype)
    assert_matches(_run(inputs, out_dtype), reference64(inputs))


@given(counts=routings(MAX_EXPERTS, MAX_TOKENS, BOUNDARIES), k=st.sampled_from(K_CHOICES), seed=st.integers(0, 2**31 - 1))
def test_exact_inputs_bit_equal_to_reference(device, counts, k, seed):
    """Small integers and power-of-two scales: every partial sum is exact, so any scale-index or
    row-mapping mistake shows as a difference, however small."""
    inputs = make_inputs(counts, 144, k, seed, device, exact=True)
    got = _run(inputs, torch.bfloat16)
    expected = _run(inputs, torch.bfloat16, backend="reference")
    assert torch.equal(got.cpu(), expected.cpu())


# Every launch shape choose_config may pick: the table's rows and the buckets' decode tile in each launch
# order (row tiles fastest, persistent, row tiles in groups).
TILES = TILE_CONFIGS + (DECODE_TILE,)
LAUNCH_VARIANTS = TILES + tuple(c.persistent(2) for c in TILES) + tuple(replace(c, row_group=8) for c in TILES)


@given(
    counts=routings(MAX_EXPERTS, MAX_TOKENS, BOUNDARIES),
    config=st.sampled_from(LAUNCH_VARIANTS),
    k=st.sampled_from(K_CHOICES),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_launch_shape_against_reference(device, counts, config, k, seed):
    inputs = make_inputs(counts, 144, k, seed, device)
    out = poisoned_out(sum(counts), 144, torch.bfloat16, device)
    problem = check_inputs(**inputs, out=out)
    if problem.total_m:
        grouped_gemm_triton(problem, *inputs.values(), out, config=config)
    assert_matches(out, reference64(inputs))


@pytest.mark.parametrize("row_group", [1, 3, 64])
def test_row_grouped_launch_order_changes_no_bit(device, row_group):
    """The launch order in groups of row tiles (TileConfig.row_group; a last group of fewer row tiles, one
    group of all of them) runs the same tiles with the same arithmetic as row tiles fastest: equal bits."""
    inputs = make_inputs([37, 0, 70, 5, 51], 400, 256, 7, device)
    problem = check_inputs(**inputs, out=poisoned_out(163, 400, torch.bfloat16, device))
    outs = []
    for group in (0, row_group):
        out = poisoned_out(163, 400, torch.bfloat16, device)
        grouped_gemm_triton(problem, *inputs.values(), out, config=replace(DECODE_TILE, row_group=group))
        outs.append(out)
    assert torch.equal(outs[0].cpu(), outs[1].cpu())
    assert_matches(outs[1], reference64(inputs))


# The expert-specialized table, and one whose buckets are persistent launches (both launch shapes per bucket).
BUCKET_TABLES = (TRITON_BUCKETS, tuple(TritonBucket(b.max_rows, b.config.persistent(2)) for b in TRITON_BUCKETS))


@given(
    counts=routings(MAX_EXPERTS, MAX_TOKENS, BOUNDARIES),
    table=st.sampled_from(BUCKET_TABLES),
    k=st.sampled_from(K_CHOICES),
    exact=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_expert_specialized_buckets_against_reference(device, counts, table, k, exact, seed):
    """Every expert in exactly one bucket's launch: each row written once, by the tile of its expert's
    bucket; on exact inputs bit-equal to the reference."""
    inputs = make_inputs(counts, 144, k, seed, device, exact=exact)
    out = poisoned_out(sum(counts), 144, torch.bfloat16, device)
    problem = check_inputs(**inputs, out=out)
    if problem.total_m:
        grouped_gemm_triton(problem, *inputs.values(), out, buckets=table)
    if exact:
        assert torch.equal(out.cpu(), _run(inputs, torch.bfloat16, backend="reference").cpu())
    assert_matches(out, reference64(inputs))


@given(
    counts=routings(MAX_EXPERTS, MAX_TOKENS, BOUNDARIES),
    k=st.sampled_from(K_CHOICES),
    exact=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_two_kinds_in_one_launch_against_reference(device, counts, k, exact, seed):
    """The two-kind persistent kernel: experts on either side of split_rows in their own tile, each row
    written once; on exact inputs bit-equal to the reference."""
    inputs = make_inputs(counts, 144, k, seed, device, exact=exact)
    out = poisoned_out(sum(counts), 144, torch.bfloat16, device)
    problem = check_inputs(**inputs, out=out)
    if problem.total_m:
        tensors = (*inputs.values(), out)
        plan_two_kinds(problem, TRITON_TWO_KINDS)(tuple(t.data_ptr() for t in tensors), lambda: tensors)
    if exact:
        assert torch.equal(out.cpu(), _run(inputs, torch.bfloat16, backend="reference").cpu())
    assert_matches(out, reference64(inputs))


def test_unreachable_buckets_are_not_launched(device):
    """A bucket whose experts would need more rows than the call has is not launched: at 16 rows only the
    first bucket runs (one DirectLaunch), at 17 rows the first two."""
    for total_m, launches in ((16, 1), (17, 2), (65, 3)):
        problem = check_inputs(**make_inputs([total_m], 144, 128, seed=0, device=device))
        plan = plan_triton(problem, buckets=TRITON_BUCKETS)
        count = len(plan.launches) if isinstance(plan, LaunchSequence) else 1
        assert count == launches, (total_m, count)


def test_persistent_scan_past_one_chunk(device):
    """More experts than one scan chunk holds (1024): the persistent grid locates each tile by the chunked
    scan instead of the schedule kept in registers."""
    counts = [0] * 1100
    counts[3], counts[1030], counts[1099] = 5, 17, 40
    inputs = make_inputs(counts, 48, 128, seed=3, device=device)
    out = poisoned_out(sum(counts), 48, torch.bfloat16, device)
    grouped_gemm_triton(check_inputs(**inputs, out=out), *inputs.values(), out, config=DECODE_TILE.persistent(2))
    assert_matches(out, reference64(inputs))


@pytest.mark.parametrize("total_m, k, experts, order", [
    (5750, 384, 128, (2, 0)),     # k of 3 blocks, 4-warp tile: persistent, 2 programs per SM
    (13580, 7168, 256, (0, 8)),   # a of 97 MB: row tiles in groups of 8
    (1473, 7168, 32, (0, 0)),     # a of 11 MB stays in the L2: row tiles fastest
    (32768, 256, 8, (0, 0)),      # small k, but an 8-warp tile (one per SM): not persistent; a of 8 MB
])
def test_launch_order_from_k_and_the_size_of_a(total_m, k, experts, order):
    config = choose_config(Problem(total_m, 4096, k, experts, torch.bfloat16, torch.device("cpu")))
    assert (config.programs_per_sm, config.row_group) == order


@pytest.mark.parametrize("gluon_runs", [False, True])
def test_launch_order_keeps_the_warp_specialized_tiles_programs(monkeypatch, gluon_runs):
    """A warp-specialized tile keeps its persistent grid where it runs; where it cannot (kernel.py's tile
    runs instead), kernel.py's rules give one program per tile."""
    monkeypatch.setattr(launch, "hopper_tile_reasons", lambda problem, upcast=None: [] if gluon_runs else ["no"])
    config = replace(launch.WARP_SPECIALIZED_TILE, programs_per_sm=1)
    for total_m, row_group in ((13580, 8), (1473, 0)):
        problem = Problem(total_m, 4096, 7168, 32, torch.bfloat16, torch.device("cpu"))
        ordered = launch.launch_order(problem, config)
        assert (ordered.programs_per_sm, ordered.row_group) == (1 if gluon_runs else 0, row_group)


def test_tile_configs_cover_every_mean():
    assert TILE_CONFIGS[-1].max_mean_tokens == float("inf")
    bounds = [c.max_mean_tokens for c in TILE_CONFIGS]
    assert bounds == sorted(bounds)


@pytest.mark.parametrize("poisoned", ["a_scale", "a"])
def test_nan_stays_in_its_experts_rows(device, poisoned):
    """NaN in one expert's activations (or their scales) reaches that expert's rows and no other."""
    if poisoned == "a" and device.type == "cpu":
        pytest.skip("the Triton interpreter decodes the e4m3 NaN pattern as 480 in tl.dot")
    counts = [5, 0, 9, 3]
    inputs = make_inputs(counts, 128, 256, seed=7, device=device)
    inputs[poisoned][5:14] = float("nan")  # expert 2's rows
    out = _run(inputs, torch.bfloat16).cpu()
    assert out[5:14].isnan().all()
    others = torch.ones(sum(counts), dtype=torch.bool)
    others[5:14] = False
    assert not out[others].isnan().any()


@needs_gpu
@pytest.mark.parametrize("counts", [[0] * 511 + [300], [1] * 512, [3, 0] * 256])
def test_many_experts(counts):
    inputs = make_inputs(counts, 128, 256, seed=1, device="cuda")
    assert_matches(_run(inputs, torch.bfloat16), reference64(inputs))


@needs_gpu
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_forced_bf16_upcast_path(out_dtype):
    """The path taken below sm_89 (no FP8 tensor cores), forced on this GPU."""
    counts = [0, 40, 1, 130, 17]
    inputs = make_inputs(counts, 256, 384, seed=5, device="cuda")
    out = poisoned_out(sum(counts), 256, out_dtype, "cuda")
    problem = check_inputs(**inputs, out=out)
    grouped_gemm_triton(problem, *inputs.values(), out, upcast=True)
    assert_matches(out, reference64(inputs))


@needs_gpu
def test_cuda_graph_replay_with_new_routing():
    """The call has no device-to-host copy: captured once, it follows new offsets and inputs on replay."""
    counts = [20, 0, 50, 10]
    inputs = make_inputs(counts, 256, 512, seed=11, device="cuda")
    out = poisoned_out(sum(counts), 256, torch.bfloat16, "cuda")
    es_dual.grouped_gemm_fp8(**inputs, out=out, backend="triton")  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        es_dual.grouped_gemm_fp8(**inputs, out=out, backend="triton")
    for seed, new_counts in enumerate([[0, 80, 0, 0], [1, 2, 3, 74], [40, 40, 0, 0]]):
        fresh = make_inputs(new_counts, 256, 512, seed=seed, device="cuda")
        for name, t in fresh.items():
            inputs[name].copy_(t)
        out.fill_(float("nan"))
        graph.replay()
        assert_matches(out, reference64(inputs))

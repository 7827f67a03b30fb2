"""The warp-specialized 128 x 128 tile (es_dual/triton_ref/hopper.py, a TileConfig with hopper_stages): on
an sm_90 GPU it runs hopper.large_tile_kernel, checked here against the float64 reference like kernel.py's
tiles (routings around its 128-row tiles, K past the last full block, the masked layout, MN-major scales,
graph replay); elsewhere the same configuration runs kernel.py's tile, which the interpreter checks."""
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import es_dual
from es_dual.problem import Problem, check_inputs, check_masked_inputs
from es_dual.triton_ref.launch import (
    WARP_SPECIALIZED_TILE, HopperTileLaunch, TileConfig, grouped_gemm_triton, hopper_tile_reasons, plan_triton,
)
from support import (
    assert_matches, make_inputs, mn_major, needs_gpu, needs_interpreter, poisoned_out, reference64, routings,
)

ON_GPU = torch.cuda.is_available()


def _gpu_reasons() -> list[str]:
    if not ON_GPU:
        return ["needs a CUDA GPU"]
    return hopper_tile_reasons(Problem(256, 256, 256, 2, torch.bfloat16, torch.device("cuda", torch.cuda.current_device())))


needs_hopper_tile = pytest.mark.skipif(bool(_gpu_reasons()), reason="; ".join(_gpu_reasons()))
LAUNCHES = (WARP_SPECIALIZED_TILE, replace(WARP_SPECIALIZED_TILE, row_group=0, hopper_stages=3),
            replace(WARP_SPECIALIZED_TILE, hopper_math_partitions=2),
            replace(WARP_SPECIALIZED_TILE, hopper_math_partitions=2, programs_per_sm=1))  # a persistent grid
K_CHOICES = (16, 112, 128, 160, 384, 1024, 2064)


def _run(inputs, config, out_dtype=torch.bfloat16):
    out = poisoned_out(inputs["a"].shape[0], inputs["b"].shape[1], out_dtype, inputs["a"].device)
    problem = check_inputs(**inputs, out=out)
    if problem.total_m:
        grouped_gemm_triton(problem, *inputs.values(), out, config=config)
    return out


@needs_hopper_tile
@given(
    counts=routings(64, 600, boundaries=(64, 128, 256)),
    n=st.sampled_from([128, 256, 384]),
    k=st.sampled_from(K_CHOICES),
    config=st.sampled_from(LAUNCHES),
    out_dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    int64=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_against_reference(counts, n, k, config, out_dtype, int64, seed):
    inputs = make_inputs(counts, n, k, seed, "cuda")
    if int64:
        inputs["expert_offsets"] = inputs["expert_offsets"].long()
    assert_matches(_run(inputs, config, out_dtype), reference64(inputs))


@needs_hopper_tile
@given(counts=routings(16, 600, boundaries=(128, 256)), k=st.sampled_from(K_CHOICES), config=st.sampled_from(LAUNCHES),
       seed=st.integers(0, 2**31 - 1))
def test_exact_inputs_bit_equal_to_reference(counts, k, config, seed):
    """Exact products and sums (support.make_inputs): a wrong row, scale or K block shows in any bit."""
    inputs = make_inputs(counts, 256, k, seed, "cuda", exact=True)
    got = _run(inputs, config)
    assert torch.equal(got, es_dual.grouped_gemm_fp8(**inputs, backend="reference"))


@needs_hopper_tile
def test_the_plan_is_the_warp_specialized_kernel():
    problem = check_inputs(**make_inputs([130, 0, 7], 256, 384, 0, "cuda"))
    assert isinstance(plan_triton(problem, config=WARP_SPECIALIZED_TILE), HopperTileLaunch)


@needs_hopper_tile
@pytest.mark.parametrize("counts", [[0, 129, 300, -2], [200, 200, 200]])
@pytest.mark.parametrize("config", LAUNCHES[::2] + LAUNCHES[3:])  # one math partition, two, persistent
def test_masked_layout_writes_only_counted_rows(counts, config):
    max_m, n, k = 200, 256, 640
    inputs = make_inputs([max_m] * len(counts), n, k, 3, "cuda")
    a = inputs["a"].view(len(counts), max_m, k)
    a_scale = inputs["a_scale"].view(len(counts), max_m, -1)
    masked_m = torch.tensor(counts, dtype=torch.int32, device="cuda")
    out = torch.full((len(counts), max_m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    problem = check_masked_inputs(a, a_scale, inputs["b"], inputs["b_scale"], masked_m, out=out)
    grouped_gemm_triton(problem, a, a_scale, inputs["b"], inputs["b_scale"], masked_m, out, config=config)
    want = reference64(inputs).view(len(counts), max_m, n)
    for e, m in enumerate(counts):
        m = min(max(m, 0), max_m)
        assert out[e, m:].isnan().all(), f"expert {e}: a row past its count was written"
        assert_matches(out[e, :m], want[e, :m])


@needs_hopper_tile
def test_mn_major_scales_give_the_same_bits():
    inputs = make_inputs([150, 3, 0, 260], 256, 384, 5, "cuda")
    want = _run(inputs, WARP_SPECIALIZED_TILE)
    inputs["a_scale"] = mn_major(inputs["a_scale"], inputs["a_scale"].shape[0] + 3)
    assert torch.equal(_run(inputs, WARP_SPECIALIZED_TILE), want)


@needs_hopper_tile
def test_cuda_graph_replay_with_new_routing():
    """The descriptors captured with the graph point at the same tensors; new counts are read on replay."""
    inputs = make_inputs([300, 0, 212], 256, 512, 11, "cuda")
    out = poisoned_out(512, 256, torch.bfloat16, "cuda")
    problem = check_inputs(**inputs, out=out)
    launch = plan_triton(problem, config=WARP_SPECIALIZED_TILE)
    tensors = (*inputs.values(), out)
    launch(None, lambda: tensors)  # compiled before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch(None, lambda: tensors)
    for seed, counts in enumerate([[12, 400, 100], [0, 0, 512]]):
        fresh = make_inputs(counts, 256, 512, seed, "cuda")
        for name, t in fresh.items():
            inputs[name].copy_(t)
        out.fill_(float("nan"))
        graph.replay()
        assert_matches(out, reference64(inputs))


def test_reasons_name_what_is_missing():
    cpu = Problem(256, 256, 256, 2, torch.bfloat16, torch.device("cpu"))
    assert hopper_tile_reasons(cpu) == ["runs on CUDA tensors, not cpu"]
    with pytest.raises(ValueError, match="invalid Triton tile"):
        TileConfig(float("inf"), 64, 128, 128, 4, 4, hopper_stages=4)
    with pytest.raises(ValueError, match="invalid Triton tile"):
        TileConfig(float("inf"), 128, 128, 128, 8, 3, hopper_stages=1)
    with pytest.raises(ValueError, match="invalid Triton tile"):
        TileConfig(float("inf"), 128, 128, 128, 8, 3, hopper_stages=4, hopper_math_partitions=4)


@needs_interpreter
def test_elsewhere_the_same_tile_runs_in_the_triton_kernel():
    inputs = make_inputs([130, 0, 9], 128, 160, 2, "cpu")
    problem = check_inputs(**inputs)
    launch = plan_triton(problem, config=WARP_SPECIALIZED_TILE)
    assert not isinstance(launch, HopperTileLaunch)
    # kernel.py's stages, not the Gluon kernel's: 4 stages of 128 x 128 would not fit a GPU of 100 KB of
    # shared memory per block
    assert launch.options["num_stages"] == WARP_SPECIALIZED_TILE.num_stages != WARP_SPECIALIZED_TILE.hopper_stages
    assert_matches(_run(inputs, WARP_SPECIALIZED_TILE), reference64(inputs))


@needs_gpu
def test_n_not_a_multiple_of_128_takes_the_triton_kernel():
    inputs = make_inputs([130, 9], 144, 256, 4, "cuda")
    problem = check_inputs(**inputs)
    assert any("multiple of 128" in r for r in hopper_tile_reasons(problem))
    assert not isinstance(plan_triton(problem, config=WARP_SPECIALIZED_TILE), HopperTileLaunch)
    assert_matches(_run(inputs, WARP_SPECIALIZED_TILE), reference64(inputs))

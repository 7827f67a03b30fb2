"""Expert parallelism (es_dual.moe.ep): each rank's result equals the single-process layer on the same tokens,
within the layer's tolerance. CPU processes talk over gloo; on a machine with a GPU, one process per GPU over
NCCL (one process on a single GPU)."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import es_dual
from es_dual.accuracy import relative_errors
from es_dual.bench.ep import free_port, join_local_group
from es_dual.moe.ep import ep_fused_moe_fp8, expert_range
from es_dual.moe.reference import layer_tolerance
from support import needs_gpu

EXPERTS, TOPK, HIDDEN, INTERMEDIATE = 8, 3, 128, 128


def test_expert_range():
    assert [expert_range(8, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ValueError, match="num_experts: expected a multiple of the world size 3, got 8"):
        expert_range(8, 0, 3)
    with pytest.raises(ValueError, match="rank: expected 0 <= rank < world_size = 2, got 2"):
        expert_range(8, 2, 2)


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)  # on the CPU: every rank and device draws the same model
    w13, s13 = es_dual.quantize_fp8_per_block(torch.randn(EXPERTS, 2 * INTERMEDIATE, HIDDEN, generator=g) * HIDDEN**-0.5)
    w2, s2 = es_dual.quantize_fp8_per_block(torch.randn(EXPERTS, HIDDEN, INTERMEDIATE, generator=g) * INTERMEDIATE**-0.5)
    return w13, s13, w2, s2


def _tokens(rank, tokens):
    g = torch.Generator().manual_seed(100 + rank)
    hidden = torch.randn(tokens, HIDDEN, generator=g).to(torch.bfloat16)
    ids = torch.rand(tokens, EXPERTS, generator=g).topk(TOPK, dim=1).indices.to(torch.int32)
    if tokens > 2:
        ids[1, 0] = EXPERTS + 5  # an id outside the model: contributes nothing, on every rank
    weights = torch.softmax(torch.randn(tokens, TOPK, generator=g), dim=1)
    return hidden, weights, ids


def _rank(rank, world, port, collective, results):
    device = join_local_group(rank, world, port, collective)
    try:
        w13, s13, w2, s2 = (t.to(device) for t in _model())
        first, end = expert_range(EXPERTS, rank, world)
        hidden, weights, ids = (t.to(device) for t in _tokens(rank, tokens=[5, 0, 9, 1][rank % 4]))
        got = ep_fused_moe_fp8(hidden, w13[first:end], s13[first:end], w2[first:end], s2[first:end], weights, ids)
        want = es_dual.fused_moe_fp8(hidden, w13, s13, w2, s2, weights, ids)
        results[rank] = (tuple(got.shape), *(relative_errors(got, want) if want.numel() else (0.0, 0.0)))
    finally:
        dist.destroy_process_group()


def _round_trip(world, collective, device_type):
    results = mp.Manager().dict()
    mp.spawn(_rank, args=(world, free_port(), collective, results), nprocs=world)
    max_tol, rms_tol = layer_tolerance(device_type)
    for rank in range(world):
        shape, max_rel, rms_rel = results[rank]
        assert shape == ([5, 0, 9, 1][rank % 4], HIDDEN)
        assert max_rel <= max_tol and rms_rel <= rms_tol, (rank, max_rel, rms_rel)


@pytest.mark.parametrize("world", [2, 4])
def test_round_trip_equals_one_process(world):
    _round_trip(world, "gloo", "cpu")


@needs_gpu
def test_round_trip_over_nccl():
    """One process per GPU over NCCL (the single-GPU machine runs a group of one: the collectives still
    go through NCCL, the tokens stay on their rank)."""
    _round_trip(torch.cuda.device_count(), "nccl", "cuda")


def test_ep_benchmark_runs(tmp_path):
    """python -m es_dual.bench --ep: every rank's round trip checked against the single-device layer and
    timed step by step (gloo processes and a tiny model on the CPU; NCCL and Qwen3-235B's experts on GPUs)."""
    from es_dual.bench.ep import COLUMNS, run_ep

    argv = ["--ep", "--iterations", "2", "--csv", str(tmp_path / "ep.csv")]
    if torch.cuda.is_available():
        argv += ["--models", "qwen3_235b", "--batches", "1,8"]
    rows = run_ep(argv)
    world = torch.cuda.device_count() if torch.cuda.is_available() else 2
    assert len(rows) == world * 2 and {r["rank"] for r in rows} == set(range(world))
    assert all(r["status"] == "ok" and r["round_trip_us"] > 0 for r in rows), rows
    assert (tmp_path / "ep.csv").read_text().splitlines()[0] == ",".join(COLUMNS)

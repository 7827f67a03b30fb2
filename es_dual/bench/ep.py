"""python -m es_dual.bench --ep: expert parallelism on several GPUs, the dispatch -> local layer -> combine
round trip of es_dual.moe.ep, one process per GPU over NCCL (NVLink multicast off), at decode batches.

Each rank holds an even share of the model's experts and its own tokens (batch per rank, top-k uniform,
seeded per rank). Per model and batch every rank:
- checks its round trip's output against the single-device layer with all experts on the same tokens
  (es_dual.moe.reference.layer_tolerance);
- times the three steps, each synchronized on its own (dispatch exchanges the counts and reads them on the
  host, so the round trip is eager by nature): median µs over the iterations after a warm-up;
- times that single-device layer (all experts on one GPU, where they fit) as the comparison.
Rank 0 prints every rank's row. Models: DeepSeek-R1 (E=256, topk=8, H=7168, I=2048, unsharded) and
Qwen3-235B (E=128, topk=8, H=4096, I=1536). Without GPUs: gloo processes and a tiny model (a smoke test;
its times say nothing about GPUs).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..accuracy import relative_errors
from ..moe.ep import combine, dispatch, expert_range, local_layer
from ..moe.layer import fused_moe_fp8
from ..moe.reference import layer_tolerance
from .layer import LayerModel, make_batch, make_weights

MODELS = {
    "deepseek_r1": LayerModel("deepseek_r1", num_experts=256, topk=8, hidden=7168, intermediate=2048),
    "qwen3_235b": LayerModel("qwen3_235b", num_experts=128, topk=8, hidden=4096, intermediate=1536),
}
CPU_MODEL = LayerModel("tiny_cpu", num_experts=8, topk=2, hidden=256, intermediate=128)
BATCHES = (1, 8, 32, 64, 128, 256)
CPU_BATCHES = (1, 3)
COLUMNS = ("model", "world", "rank", "batch", "dispatch_us", "local_us", "combine_us", "round_trip_us",
           "single_device_us", "max_rel_err", "rms_rel_err", "status")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    """(fn's result, its wall time in µs), synchronized before and after."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return result, 1e6 * (time.perf_counter() - start)


def _round_trip(weights, batch_inputs, device, group):
    """One round trip, each step timed: (output, dispatch µs, local µs, combine µs)."""
    hidden, topk_weights, topk_ids = batch_inputs
    d, t_dispatch = _timed(lambda: dispatch(hidden, topk_weights, topk_ids, weights[0].shape[0], group), device)
    partial, t_local = _timed(lambda: local_layer(d, *weights, group=group), device)
    out, t_combine = _timed(lambda: combine(d, partial, group), device)
    return out, t_dispatch, t_local, t_combine


def _rank_rows(model: LayerModel, batches, iterations: int, device, group) -> list[dict]:
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    full = make_weights(model, device)  # the same model on every rank (seeded), for the single-device layer
    first, end = expert_range(model.num_experts, rank, world)
    local = tuple(t[first:end] for t in full)
    rows = []
    for batch in batches:
        inputs = make_batch(model, batch, device, seed=1 + rank)
        row = dict(model=model.name, world=world, rank=rank, batch=batch)
        single = fused_moe_fp8(inputs[0], *full, inputs[1], inputs[2])
        out = _round_trip(local, inputs, device, group)[0]  # also the warm-up of every step
        max_rel, rms_rel = relative_errors(out, single) if single.numel() else (0.0, 0.0)
        max_tol, rms_tol = layer_tolerance(device)
        ok = max_rel <= max_tol and rms_rel <= rms_tol
        row.update(max_rel_err=max_rel, rms_rel_err=rms_rel,
                   status="ok" if ok else f"WRONG: max rel err {max_rel:.3g}, rms {rms_rel:.3g}")
        samples = [_round_trip(local, inputs, device, group)[1:] for _ in range(iterations)]
        for name, values in zip(("dispatch_us", "local_us", "combine_us"), zip(*samples)):
            row[name] = statistics.median(values)
        row["round_trip_us"] = statistics.median(sum(s) for s in samples)
        row["single_device_us"] = statistics.median(
            _timed(lambda: fused_moe_fp8(inputs[0], *full, inputs[1], inputs[2]), device)[1] for _ in range(iterations))
        rows.append(row)
    return rows


def free_port() -> int:
    """A free TCP port of this host, for the group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_local_group(rank: int, world: int, port: int, collective: str) -> torch.device:
    """Join a group of `world` processes of this host as `rank` (rendezvous on `port`): over NCCL one GPU
    per rank, NVLink multicast off (not every multi-GPU host supports it); over gloo on the CPU. Returns
    the rank's device."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
    device = torch.device("cuda", rank) if collective == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(collective, rank=rank, world_size=world, device_id=device if device.type == "cuda" else None)
    return device


def _worker(rank, world, port, collective, model_names, batches, iterations, results):
    # on the CPU: the layer's torch steps and the reference GEMMs (no TRITON_INTERPRET needed)
    device = join_local_group(rank, world, port, collective)
    try:
        models = [MODELS[n] for n in model_names] if collective == "nccl" else [CPU_MODEL]
        rows = [r for model in models for r in _rank_rows(model, batches, iterations, device, None)]
        gathered = [None] * world
        dist.all_gather_object(gathered, rows)
        if rank == 0:
            results.extend([r for ranks in gathered for r in ranks])
    finally:
        dist.destroy_process_group()


def _line(r: dict) -> str:
    times = " ".join(f"{r[c]:>10.1f}" for c in COLUMNS[4:9])
    return f"{r['model']:<12} {r['world']:>5} {r['rank']:>4} {r['batch']:>5} {times} {r['max_rel_err']:>9.2e} {r['status']}"


def run_ep(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m es_dual.bench --ep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ep", action="store_true", help=argparse.SUPPRESS)  # how __main__ routes here
    parser.add_argument("--world", type=int, help="processes (default: every GPU; 2 on a CPU-only machine)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated among {', '.join(MODELS)}")
    parser.add_argument("--batches", help="tokens per rank, comma-separated (default: 1..256 on GPUs, 1,3 on CPUs)")
    parser.add_argument("--iterations", type=int, default=20, help="timed round trips per batch (median)")
    parser.add_argument("--csv", help="write one row per model, batch and rank to this CSV file")
    args = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    world = args.world or (torch.cuda.device_count() if on_gpu else 2)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s): {', '.join(unknown)}; models: {', '.join(MODELS)}")
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(BATCHES if on_gpu else CPU_BATCHES)
    collective = "nccl" if on_gpu else "gloo"
    print(f"es_dual expert-parallel benchmark | {world} x "
          f"{torch.cuda.get_device_name(0) if on_gpu else 'CPU process (gloo, tiny model: times say nothing about GPUs)'}"
          f" | torch {torch.__version__} | {collective}", flush=True)
    results = mp.Manager().list()
    mp.spawn(_worker, args=(world, free_port(), collective, names, batches, args.iterations, results), nprocs=world)
    rows = [dict(r) for r in results]
    print(f"{'model':<12} {'world':>5} {'rank':>4} {'batch':>5} " + " ".join(f"{c[:-3]:>10}" for c in COLUMNS[4:9])
          + "  (µs, eager, median)")
    for r in rows:
        print(_line(r))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    bad = [r for r in rows if r["status"] != "ok" or any(math.isnan(r[c]) for c in COLUMNS[4:9])]
    if bad:
        print(f"{len(bad)} row(s) not ok", file=sys.stderr)
    return rows

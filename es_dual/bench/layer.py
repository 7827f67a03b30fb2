"""python -m es_dual.bench --layer: the whole MoE expert block, es_dual's fused layer against the same
pipeline built on torch._scaled_grouped_mm and a plain torch pipeline, at serving batch sizes.

On a GPU: DeepSeek-R1 TP8 (E=256, topk=8, H=7168, I=256 per shard) and Qwen3-235B TP4 (E=128, topk=8,
H=4096, I=384 per shard), batches 1 to 4096. On a CPU-only machine: one tiny scaled-down model with the
Triton interpreter (the times then say nothing about GPUs; the run checks that everything works).

Routing: every token picks topk distinct experts uniformly at random (seeded), softmax weights.
Each provider's output is checked once against es_dual.moe.fused_moe_fp8_reference; a wrong output is
reported, not timed. The floor is the weight read: the FP8 bytes of w13 and w2 of every expert that
received a token (counted on the host from the routing), over the copy bandwidth measured in this run;
every provider is reported as % of that same floor. It is what small batches are bound by; at large
batches the activations (T*topk rows of H) and the FLOPs add to it, so 100% is out of reach there.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from ..accuracy import relative_errors
from ..dispatch import available_backends
from ..problem import FP8
from ..moe.reference import layer_tolerance
from ..quant import FP8_MAX, dequantize_per_block, quantize_fp8_per_block
from .timing import copy_bandwidth, time_us

COLUMNS = ("model", "batch", "provider", "mode", "us", "pct_weight_floor", "floor_us", "experts_hit",
           "max_rel_err", "rms_rel_err", "status", "device")


@dataclass(frozen=True)
class LayerModel:
    name: str
    num_experts: int
    topk: int
    hidden: int
    intermediate: int  # per shard


MODELS = (
    LayerModel("deepseek_r1_tp8", num_experts=256, topk=8, hidden=7168, intermediate=256),
    LayerModel("qwen3_235b_tp4", num_experts=128, topk=8, hidden=4096, intermediate=384),
)
CPU_MODELS = (LayerModel("tiny_cpu", num_experts=8, topk=2, hidden=256, intermediate=128),)
BATCHES = (1, 4, 16, 64, 256, 1024, 4096)
CPU_BATCHES = (1, 4, 16)


class Unavailable(Exception):
    """The provider cannot run here."""


# ---- the pipelines the fused layer is compared with, written plainly in torch ----

def _rowwise_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 with one float32 scale per row (the last dimension shares it): what torch._scaled_grouped_mm takes."""
    scale = x.abs().amax(dim=-1).float().clamp(min=1e-10) / FP8_MAX
    return (x.float() / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def scaled_grouped_mm_moe(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids) -> torch.Tensor:
    """The expert block on torch._scaled_grouped_mm with rowwise scales: w13 (E, 2I, H) and w2 (E, H, I)
    FP8 with one scale per output row, w13_scale (E, 2I), w2_scale (E, H); activations one scale per row.
    Sync-free like the fused layer, but every step is its own torch op."""
    tokens, topk = topk_ids.shape
    num_experts = w13.shape[0]
    sorted_ids, order = torch.sort(topk_ids.reshape(-1), stable=True)
    thresholds = torch.arange(1, num_experts + 1, dtype=sorted_ids.dtype, device=sorted_ids.device)
    ends = torch.searchsorted(sorted_ids, thresholds, out_int32=True)  # end row of each expert
    token = order // topk
    x, x_scale = _rowwise_fp8(hidden[token])
    gate_up = torch._scaled_grouped_mm(x, w13.transpose(1, 2), x_scale, w13_scale, offs=ends, out_dtype=torch.bfloat16)
    gate, up = gate_up.float().chunk(2, dim=-1)
    y, y_scale = _rowwise_fp8(torch.nn.functional.silu(gate) * up)
    down = torch._scaled_grouped_mm(y, w2.transpose(1, 2), y_scale, w2_scale, offs=ends, out_dtype=torch.bfloat16)
    weighted = down.float() * topk_weights.reshape(-1)[order, None]
    out = torch.zeros(tokens, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    return out.index_add_(0, token, weighted).to(torch.bfloat16)


def torch_bf16_moe(hidden, w13, w2, topk_weights, topk_ids) -> torch.Tensor:
    """The plain eager pipeline: bf16 weights, a Python loop over the experts that received tokens, the
    per-expert counts read on the host (a sync) to slice the sorted pairs, bf16 matmuls, index_add_."""
    tokens, topk = topk_ids.shape
    num_experts = w13.shape[0]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    token = order // topk
    weight = topk_weights.reshape(-1)[order]
    out = torch.zeros(tokens, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    start = 0
    for e, count in enumerate(counts):
        if count:
            rows = slice(start, start + count)
            gate, up = (hidden[token[rows]] @ w13[e].T).chunk(2, dim=-1)
            down = (torch.nn.functional.silu(gate) * up) @ w2[e].T
            out.index_add_(0, token[rows], down.float() * weight[rows, None])
        start += count
    return out.to(torch.bfloat16)


# ---- providers: prepare(weights) -> call(hidden, topk_weights, topk_ids) ----

@dataclass(frozen=True)
class LayerProvider:
    name: str
    label: str
    prepare: Callable  # prepare((w13, w13_scale, w2, w2_scale), device) -> call; raises Unavailable
    capturable: bool  # no host sync: --graph times it as a CUDA-graph replay
    # allowed (max, rms) relative error against the layer reference; see COARSE_TOL
    tolerance: tuple[float, float]


def _es_dual(backend: str) -> Callable:
    def prepare(weights, device):
        from ..moe import fused_moe_fp8

        return lambda hidden, tw, ids: fused_moe_fp8(hidden, *weights, tw, ids, backend=backend)

    return prepare


def _rowwise_weights(w, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise FP8 weights requantized with one scale per output row, one expert at a time."""
    pairs = [_rowwise_fp8(dequantize_per_block(w[e], scale[e])) for e in range(w.shape[0])]
    return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])


def _torch_scaled_grouped(weights, device):
    if device.type != "cuda" or not hasattr(torch, "_scaled_grouped_mm"):
        raise Unavailable(f"torch._scaled_grouped_mm needs CUDA tensors and torch >= 2.8 "
                          f"(here {device}, torch {torch.__version__})")
    w13, s13, w2, s2 = weights
    w13_rw, w13_rs = _rowwise_weights(w13, s13)
    w2_rw, w2_rs = _rowwise_weights(w2, s2)
    return lambda hidden, tw, ids: scaled_grouped_mm_moe(hidden, w13_rw, w13_rs, w2_rw, w2_rs, tw, ids)


def _torch_bf16(weights, device):
    w13, s13, w2, s2 = weights
    w13_bf16 = torch.stack([dequantize_per_block(w13[e], s13[e]).to(torch.bfloat16) for e in range(w13.shape[0])])
    w2_bf16 = torch.stack([dequantize_per_block(w2[e], s2[e]).to(torch.bfloat16) for e in range(w2.shape[0])])
    return lambda hidden, tw, ids: torch_bf16_moe(hidden, w13_bf16, w2_bf16, tw, ids)


# Tolerances against fused_moe_fp8_reference: es_dual's is the tests' (es_dual.moe.reference.layer_tolerance).
# The torch pipelines quantize differently, so their distance to the reference is quantization error:
# each e4m3 rounding is ~2.6% RMS relative (3 mantissa bits), and up to ~8 of them differ between the
# pipelines (the rowwise one requantizes the weights and scales activations per row; SiLU * up doubles
# the weight of the first one): ~8% RMS measured (bf16 activations: ~5%). 0.2 RMS / 0.5 max leave room
# and still fail any routing or permutation mistake, whose errors are of order 100%.
COARSE_TOL = (0.5, 0.2)


def providers(device) -> list[LayerProvider]:
    """es_dual with every backend that runs here (the reference GEMM only on the CPU), then the torch pipelines."""
    backends = [b for b in available_backends(device) if b != "reference" or device.type == "cpu"]
    es = [LayerProvider(f"es_dual_{b}", f"es_dual.moe.fused_moe_fp8, backend={b!r}", _es_dual(b), b != "reference",
                        layer_tolerance(device)) for b in backends]
    return es + [
        LayerProvider("torch_scaled_grouped_mm", "torch sort/gather + torch._scaled_grouped_mm (rowwise FP8 scales) "
                      "+ torch SiLU*up + index_add_", _torch_scaled_grouped, True, COARSE_TOL),
        LayerProvider("torch_bf16_loop", "plain torch: bf16 weights, host loop over experts with tokens (counts "
                      "read on the host), bf16 matmuls, index_add_", _torch_bf16, False, COARSE_TOL),
    ]


# ---- inputs ----

def make_weights(model: LayerModel, device, seed: int = 0) -> tuple:
    """Random weights with the scale of trained ones (std 1/sqrt(fan_in)), quantized 128x128, one expert at
    a time (the float copy of all experts would be the largest allocation of the run)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def quantized(n, k):
        pairs = [quantize_fp8_per_block(torch.randn(n, k, generator=g, device=device) * k**-0.5)
                 for _ in range(model.num_experts)]
        return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])

    return (*quantized(2 * model.intermediate, model.hidden), *quantized(model.hidden, model.intermediate))


def make_batch(model: LayerModel, batch: int, device, seed: int = 0):
    """(hidden, topk_weights, topk_ids): distinct experts per token, uniform, seeded; made on the CPU."""
    g = torch.Generator().manual_seed(seed * 100003 + batch)
    topk_ids = torch.rand(batch, model.num_experts, generator=g).topk(model.topk, dim=1).indices.to(torch.int32)
    topk_weights = torch.softmax(torch.randn(batch, model.topk, generator=g), dim=1)
    hidden = torch.randn(batch, model.hidden, generator=g).to(torch.bfloat16)
    return hidden.to(device), topk_weights.to(device), topk_ids.to(device)


def weight_bytes(model: LayerModel, topk_ids) -> tuple[int, int]:
    """(experts that received a token, FP8 bytes of their w13 and w2): the floor's read."""
    hit = len(set(topk_ids.flatten().tolist()))
    return hit, hit * 3 * model.hidden * model.intermediate


def _graphed(fn: Callable) -> Callable:
    """fn captured in a CUDA graph after two warm-up calls on a side stream; replays return its output."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(), fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out

    return replay


# ---- the run ----

def _measure_one(provider, call, inputs, reference, device, graph, quick) -> dict:
    fn = lambda: call(*inputs)
    try:
        max_rel, rms_rel = relative_errors(fn(), reference)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:  # e.g. an op this GPU lacks
        return dict(status=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    row = dict(max_rel_err=max_rel, rms_rel_err=rms_rel, mode="eager")
    max_tol, rms_tol = provider.tolerance
    if not (max_rel <= max_tol and rms_rel <= rms_tol):
        return dict(row, status=f"WRONG: max rel err {max_rel:.3g}, rms {rms_rel:.3g}; not timed")
    if graph and provider.capturable:
        try:
            fn, row["mode"] = _graphed(fn), "graph"
        except RuntimeError as exc:
            return dict(row, status=f"graph capture failed: {str(exc).splitlines()[0]}")
    return dict(row, us=time_us(fn, device, quick), status="ok")


def _measure(models, batches, device, graph, quick) -> list[dict]:
    from ..moe import fused_moe_fp8_reference

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    # The CPU copy is timed on a small buffer: it only gives the CPU rows a comparable floor.
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else copy_bandwidth(device, 64 << 20)
    print(f"copy bandwidth (this run, read + write): {bandwidth / 1e9:.0f} GB/s", flush=True)
    print(f"{'model':<16} {'batch':>5} {'provider':<24} {'mode':<5} {'us':>9} {'%floor':>7} {'floor_us':>8} "
          f"{'hit':>4} {'max_rel':>9}", flush=True)
    rows = []
    for model in models:
        weights = make_weights(model, device)
        prepared = []
        for p in providers(device):
            try:
                prepared.append((p, p.prepare(weights, device), None))
            except Unavailable as exc:
                prepared.append((p, None, f"unavailable: {exc}"))
        for batch in batches:
            inputs = make_batch(model, batch, device)
            hidden, topk_weights, topk_ids = inputs
            hit, nbytes = weight_bytes(model, topk_ids)
            floor_us = nbytes / bandwidth * 1e6
            reference = fused_moe_fp8_reference(hidden, *weights, topk_weights, topk_ids)
            for p, call, why in prepared:
                row = dict(model=model.name, batch=batch, provider=p.name, mode="", us=math.nan, floor_us=floor_us,
                           pct_weight_floor=math.nan, experts_hit=hit, max_rel_err=math.nan, rms_rel_err=math.nan,
                           device=device_name)
                row.update(dict(status=why) if why else _measure_one(p, call, inputs, reference, device, graph, quick))
                row["pct_weight_floor"] = 100 * floor_us / row["us"]
                rows.append(row)
                print(_line(row), flush=True)
        del weights, prepared
    return rows


def _line(r: dict) -> str:
    head = f"{r['model']:<16} {r['batch']:>5} {r['provider']:<24}"
    if r["status"] != "ok":
        return f"{head} {r['status'][:90]}"
    return (f"{head} {r['mode']:<5} {r['us']:>9.1f} {r['pct_weight_floor']:>7.1f} {r['floor_us']:>8.1f} "
            f"{r['experts_hit']:>4} {r['max_rel_err']:>9.2e}")


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m es_dual.bench --layer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", action="store_true", help=argparse.SUPPRESS)  # how __main__ routes here
    names = ", ".join(m.name for m in (*MODELS, *CPU_MODELS))
    parser.add_argument("--models", help=f"comma-separated names among {names}")
    parser.add_argument("--batches", help="comma-separated batch sizes (default: 1..4096 on a GPU, 1,4,16 on a CPU)")
    parser.add_argument("--graph", action="store_true", help="time the sync-free providers as CUDA-graph replays")
    parser.add_argument("--quick", action="store_true", help="short timing (a smoke test)")
    parser.add_argument("--csv", help="write one row per model, batch and provider to this CSV file")
    return parser.parse_args(argv)


def run_layer(argv=None) -> list[dict]:
    args = _parse(argv)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    on_gpu = device.type == "cuda"
    if not on_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the layer's kernels are first imported
    table = {m.name: m for m in (*MODELS, *CPU_MODELS)}
    names = args.models.split(",") if args.models else [m.name for m in (MODELS if on_gpu else CPU_MODELS)]
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit(f"unknown model(s) {', '.join(unknown)}; choose among {', '.join(table)}")
    models = [table[n] for n in names]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(BATCHES if on_gpu else CPU_BATCHES)
    if on_gpu:
        print(f"es_dual layer benchmark | {torch.cuda.get_device_name(device)} | torch {torch.__version__}", flush=True)
    else:
        print("es_dual layer benchmark | CPU only: a tiny scaled-down model, the Triton interpreter; "
              "times say nothing about GPUs", flush=True)
    rows = _measure(models, batches, device, args.graph and on_gpu, args.quick)
    print("\nproviders (floor: FP8 w13 + w2 bytes of the experts hit / copy bandwidth):")
    for p in providers(device):
        print(f"  {p.name:<24} {p.label}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return rows

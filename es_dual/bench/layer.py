"""python -m es_dual.bench --layer: the whole MoE expert block, es_dual's fused layer against vLLM's Triton
fused-MoE layer (when importable: the copy in --peers DIR, else vLLM's own), the same pipeline built on
torch._scaled_grouped_mm and a plain torch pipeline, at serving batch sizes.

On a GPU: DeepSeek-R1 TP8 (E=256, topk=8, H=7168, I=256 per shard) and Qwen3-235B TP4 (E=128, topk=8,
H=4096, I=384 per shard), batches 1 to 4096. On a CPU-only machine: one tiny scaled-down model with the
Triton interpreter (the times then say nothing about GPUs; the run checks that everything works).

Routing: every token picks topk distinct experts uniformly at random (seeded), softmax weights.
Each provider's output is checked once against es_dual.moe.fused_moe_fp8_reference; a wrong output is
reported, not timed. Timing modes, as the grouped-GEMM benchmark's (es_dual/bench/timing.py): kernel (one
call captured in a CUDA graph, replayed with the L2 flushed; providers that synchronize with the host
have no row there; the CSV gives the graph's node count per call) and eager (back-to-back calls), each
after 100 ms of warm-up. The floor is max(bytes / copy bandwidth, FLOPs / FP8 matmul rate), both measured
in this run: the bytes are the FP8 w13 and w2 of every expert that received a token (counted on the host
from the routing) plus the hidden states in and the output (bf16); the FLOPs are the two GEMMs' over the
T * topk routed rows. Small batches are bound by the weight read; at large batches the intermediate
tensors (T * topk rows) are traffic the floor does not count.
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
from .providers import add_peer_paths
from .timing import L2Flush, capture, copy_bandwidth, fp8_matmul_rate, median_us, time_us

COLUMNS = ("model", "batch", "provider", "mode", "us", "pct_floor", "floor_us", "experts_hit", "graph_nodes",
           "max_rel_err", "rms_rel_err", "status", "device")
MODES = ("kernel", "eager")


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
BATCHES = (1, 8, 32, 64, 128, 256, 1024, 4096)
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
    capturable: bool  # no host sync: timed in kernel mode (a CUDA-graph replay) too
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


def _vllm_triton(weights, device):
    """vLLM's Triton fused-MoE layer (FP8 w8a8, 128 x 128 blocks): the standalone copy peer_triton_moe when
    it is on the path (--peers), else vLLM's fused_experts."""
    if device.type != "cuda":
        raise Unavailable(f"vLLM's Triton layer runs CUDA tensors, not {device.type}")
    try:
        from peer_triton_moe import peer_fused_moe

        return lambda hidden, tw, ids: peer_fused_moe(hidden, *weights, tw, ids)
    except ImportError:
        pass
    try:
        from vllm.model_executor.layers.fused_moe import fused_experts
    except ImportError as exc:
        raise Unavailable(f"neither peer_triton_moe (--peers DIR) nor vllm is importable ({exc})") from None
    w13, s13, w2, s2 = weights
    return lambda hidden, tw, ids: fused_experts(hidden, w13, w2, tw, ids, use_fp8_w8a8=True, w1_scale=s13,
                                                 w2_scale=s2, block_shape=[128, 128])


# Tolerances against fused_moe_fp8_reference: es_dual's is the tests' (es_dual.moe.reference.layer_tolerance).
# The torch pipelines quantize differently, so their distance to the reference is quantization error:
# each e4m3 rounding is ~2.6% RMS relative (3 mantissa bits), and up to ~8 of them differ between the
# pipelines (the rowwise one requantizes the weights and scales activations per row; SiLU * up doubles
# the weight of the first one): ~8% RMS measured (bf16 activations: ~5%). 0.2 RMS / 0.5 max leave room
# and still fail any routing or permutation mistake, whose errors are of order 100%.
COARSE_TOL = (0.5, 0.2)


def providers(device) -> list[LayerProvider]:
    """es_dual with "auto" (what users get: the decode path at decode sizes) and every GEMM backend that
    runs here (the reference GEMM only on the CPU; "auto" on a CPU without the interpreter is the
    reference), then the peers."""
    backends = [b for b in available_backends(device) if b != "reference" or device.type == "cpu"]
    backends = ["auto", *backends] if "triton" in backends else backends
    es = [LayerProvider(f"es_dual_{b}", f"es_dual.moe.fused_moe_fp8, backend={b!r}", _es_dual(b), b != "reference",
                        layer_tolerance(device)) for b in backends]
    return es + [
        LayerProvider("vllm_triton", "vLLM's Triton fused-MoE layer (fp8_w8a8, 128x128 blocks, its tuned "
                      "configurations)", _vllm_triton, True, COARSE_TOL),
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
    """(experts that received a token, FP8 bytes of their w13 and w2): the floor's read of weights."""
    hit = len(set(topk_ids.flatten().tolist()))
    return hit, hit * 3 * model.hidden * model.intermediate


def floor_us(model: LayerModel, batch: int, weight_nbytes: int, bandwidth: float, fp8_rate: float) -> float:
    """max(bytes / bandwidth, FLOPs / FP8 rate): the weights of the experts hit, the hidden states in and the
    output (bf16), and the two GEMMs over batch * topk rows (a rate of 0: bytes only)."""
    nbytes = weight_nbytes + 2 * 2 * batch * model.hidden
    flops = 2 * batch * model.topk * 3 * model.hidden * model.intermediate
    return 1e6 * max(nbytes / bandwidth, flops / fp8_rate if fp8_rate else 0.0)


def graph_nodes(graph: torch.cuda.CUDAGraph) -> float:
    """Nodes of a graph captured with keep_graph=True (kernels, memsets, ...): what one replay launches; NaN
    where cuda-python is missing."""
    try:
        from cuda.bindings import runtime

        err, _, count = runtime.cudaGraphGetNodes(runtime.cudaGraph_t(init_value=graph.raw_cuda_graph()))
        return float(count) if int(err) == 0 else math.nan
    except Exception:  # noqa: BLE001  (a count for the table, never a reason to stop the run)
        return math.nan


# ---- the run ----

def _check(call, inputs, reference, tolerance) -> dict:
    try:
        max_rel, rms_rel = relative_errors(call(*inputs), reference)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:  # e.g. an op this GPU lacks
        return dict(status=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    row = dict(max_rel_err=max_rel, rms_rel_err=rms_rel)
    if not (max_rel <= tolerance[0] and rms_rel <= tolerance[1]):
        return dict(row, status=f"WRONG: max rel err {max_rel:.3g}, rms {rms_rel:.3g}; not timed")
    return dict(row, status="ok")


def _time(fn, device, mode, flush, quick) -> dict:
    """One mode's time of a checked provider (CPU: the wall clock of plain calls)."""
    if device.type != "cuda":
        return dict(us=time_us(fn, device, quick))
    nodes = math.nan
    if mode == "kernel":
        try:
            graph = capture(fn, keep_graph=True)
        except RuntimeError as exc:
            return dict(status=f"graph capture failed: {str(exc).splitlines()[0]}")
        fn, nodes = graph.replay, graph_nodes(graph)
    return dict(us=median_us(fn, mode, flush, 20 if quick else 200), graph_nodes=nodes)


def kernel_breakdown(fn, calls: int = 20) -> list[tuple[str, float, float]]:
    """(kernel name, launches per call, µs per call) of what fn runs on the GPU, by torch's profiler over
    `calls` back-to-back eager calls (after one untimed call), most time first."""
    from torch.autograd import DeviceType

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    activity = torch.profiler.ProfilerActivity
    with torch.profiler.profile(activities=[activity.CPU, *([activity.CUDA] if torch.cuda.is_available() else [])]) as prof:
        for _ in range(calls):
            fn()
        sync()
    kernels = []
    for e in prof.key_averages():
        if e.device_type == DeviceType.CUDA:
            total = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
            kernels.append((e.key, e.count / calls, total / calls))
    return sorted(kernels, key=lambda k: -k[2])


def _print_breakdown(model, batch, provider, call, inputs) -> None:
    kernels = kernel_breakdown(lambda: call(*inputs))
    total = sum(us for _, _, us in kernels)
    print(f"  breakdown {model.name} T={batch} {provider}: {total:.1f} µs of kernels per call (profiler, eager)")
    for name, per_call, us in kernels:
        print(f"    {us:8.1f} µs  x{per_call:<4g} {name[:110]}")


def _measure(models, batches, device, modes, quick, breakdown=False) -> list[dict]:
    from ..moe import fused_moe_fp8_reference

    on_gpu = device.type == "cuda"
    device_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    # The CPU copy is timed on a small buffer: it only gives the CPU rows a comparable floor.
    bandwidth = copy_bandwidth(device) if on_gpu else copy_bandwidth(device, 64 << 20)
    fp8_rate = fp8_matmul_rate(device) if on_gpu else 0.0
    flush = L2Flush(device) if on_gpu else None
    print(f"ceilings (this run): copy {bandwidth / 1e9:.0f} GB/s (read + write)"
          + (f", FP8 torch._scaled_mm {fp8_rate / 1e12:.0f} TFLOP/s" if fp8_rate else ""), flush=True)
    print(f"{'model':<16} {'batch':>5} {'provider':<24} {'mode':<6} {'us':>9} {'%floor':>7} {'floor_us':>8} "
          f"{'hit':>4} {'nodes':>5} {'max_rel':>9}", flush=True)
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
            floor = floor_us(model, batch, nbytes, bandwidth, fp8_rate)
            reference = fused_moe_fp8_reference(hidden, *weights, topk_weights, topk_ids)
            for p, call, why in prepared:
                base = dict(model=model.name, batch=batch, provider=p.name, us=math.nan, floor_us=floor,
                            experts_hit=hit, graph_nodes=math.nan, max_rel_err=math.nan, rms_rel_err=math.nan,
                            device=device_name)
                checked = dict(status=why) if why else _check(call, inputs, reference, p.tolerance)
                for mode in modes:
                    if mode == "kernel" and checked["status"] == "ok" and not p.capturable:
                        continue  # it synchronizes with the host: no graph to replay
                    row = dict(base, mode=mode, **checked)
                    if checked["status"] == "ok":
                        row.update(_time(lambda: call(*inputs), device, mode, flush, quick))
                    row["pct_floor"] = 100 * floor / row["us"]
                    rows.append(row)
                    print(_line(row), flush=True)
                if breakdown and on_gpu and checked["status"] == "ok" and p.name.startswith("es_dual"):
                    _print_breakdown(model, batch, p.name, call, inputs)
        del weights, prepared
    return rows


def _line(r: dict) -> str:
    head = f"{r['model']:<16} {r['batch']:>5} {r['provider']:<24} {r['mode']:<6}"
    if r["status"] != "ok":
        return f"{head} {r['status'][:90]}"
    return (f"{head} {r['us']:>9.1f} {r['pct_floor']:>7.1f} {r['floor_us']:>8.1f} {r['experts_hit']:>4} "
            f"{r['graph_nodes']:>5.0f} {r['max_rel_err']:>9.2e}")


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m es_dual.bench --layer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", action="store_true", help=argparse.SUPPRESS)  # how __main__ routes here
    names = ", ".join(m.name for m in (*MODELS, *CPU_MODELS))
    parser.add_argument("--models", help=f"comma-separated names among {names}")
    parser.add_argument("--batches", help="comma-separated batch sizes (default: 1..4096 on a GPU, 1,4,16 on a CPU)")
    parser.add_argument("--modes", default=",".join(MODES), help="timing modes on a GPU (default: kernel,eager)")
    parser.add_argument("--peers", default=os.environ.get("ES_DUAL_PEERS"),
                        help="folder of the peers (peer_triton_moe), as for python -m es_dual.bench")
    parser.add_argument("--quick", action="store_true", help="short timing (a smoke test)")
    parser.add_argument("--csv", help="write one row per model, batch, provider and mode to this CSV file")
    parser.add_argument("--breakdown", action="store_true",
                        help="on a GPU, also each es_dual provider's kernels per call and their times (profiler)")
    return parser.parse_args(argv)


def run_layer(argv=None) -> list[dict]:
    args = _parse(argv)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    on_gpu = device.type == "cuda"
    if not on_gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the layer's kernels are first imported
    add_peer_paths(args.peers)
    table = {m.name: m for m in (*MODELS, *CPU_MODELS)}
    names = args.models.split(",") if args.models else [m.name for m in (MODELS if on_gpu else CPU_MODELS)]
    unknown = [n for n in names if n not in table]
    modes = args.modes.split(",") if on_gpu else ["eager"]
    if unknown or set(modes) - set(MODES):
        sys.exit(f"unknown model(s) or mode(s): {', '.join(unknown + sorted(set(modes) - set(MODES)))}; "
                 f"models: {', '.join(table)}; modes: {', '.join(MODES)}")
    models = [table[n] for n in names]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else list(BATCHES if on_gpu else CPU_BATCHES)
    if on_gpu:
        print(f"es_dual layer benchmark | {torch.cuda.get_device_name(device)} | torch {torch.__version__}", flush=True)
    else:
        print("es_dual layer benchmark | CPU only: a tiny scaled-down model, the Triton interpreter; "
              "times say nothing about GPUs", flush=True)
    rows = _measure(models, batches, device, modes, args.quick, args.breakdown)
    print("\nproviders (floor: max(bytes / copy bandwidth, FLOPs / FP8 rate), see --help):")
    for p in providers(device):
        print(f"  {p.name:<24} {p.label}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return rows

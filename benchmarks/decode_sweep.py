"""Time the MoE layer's decode kernels (es_dual/moe/decode_kernels.py) over launch shapes (GPU).

python benchmarks/decode_sweep.py [--batches 1,8] [--csv file] [--layer | --gather]

For each model of the layer benchmark and each batch, the gate_up kernel is timed alone for every gate_up
configuration below, and the down kernel alone for every down configuration (time_us: events, L2 flushed
before each call), each as GB/s of the weight bytes it reads; next to them, torch.sum over as many
contiguous bytes: what a plain read of that size gets. Each configuration's whole layer output is checked
against the layer's reference ("!" marks one that is not within its tolerance).

--layer: instead, the whole decode path (its three launches) for each of LAYER_CONFIGS, in kernel mode as
the layer benchmark times it (one call captured in a CUDA graph and replayed, the L2 flushed by reading
before each replay, warmed up): what the launches cost together, with or without their overlap.

--gather: the grouped pipeline (_LayerPlan, backend auto; batches such as 256,1024,4096) with its first GEMM
reading topk scattered copies of each token's quantized row, or gathering the one row by index
(layer.GATHER_FIRST_GEMM), or in the native mode (GATHER_VARIANTS), timed the same way, in two rounds
of opposite order (the faster kept); then each plan's kernels by the profiler (eager calls): where the
difference comes from.
"""
import argparse
import csv
import itertools

import torch

from es_dual.accuracy import relative_errors
from es_dual.bench.layer import MODELS, kernel_breakdown, make_batch, make_weights
from es_dual.bench.timing import L2Flush, capture, median_us, time_us
from es_dual.moe import layer as layer_module
from es_dual.moe.reference import fused_moe_fp8_reference, layer_tolerance

GATE_UP = [dict(gate_up_block_n=bn, gate_up_groups=kg, gate_up_warps=w, programs_per_sm=p)
           for bn, kg, w, p in itertools.product((32, 64, 128), (2, 4, 8), (4, 8), (4, 16))]
DOWN = [dict(down_block_n=bn, down_i_chunk=ic, down_warps=w)
        for bn, ic, w in itertools.product((8, 16, 32), (128, 256, 512), (4, 8))]

# the default, its overlap off, the tensor-core kernels (decode_gate_up_mma_kernel, decode_down_mma_kernel)
# in a few pipelines: weight rows per program, warps, stages, and for gate_up programs per SM (fewer, longer
# programs keep num_stages weight tiles in flight each), and a SiLU step of one round of loads at one token
TC_GATE_UP = dict(gate_up_tensor_cores=True, gate_up_block_n=128, gate_up_warps=4, gate_up_stages=4, programs_per_sm=2)
# the tensor-core down kernel (from 9 pairs by default) at every size, and around its default: stages,
# rows per program, warps
_TC_DOWN = dict(down_tensor_cores_from_pairs=0)
LAYER_CONFIGS = [dict(), dict(overlap_max_pairs=0),
                 dict(down_tensor_cores_from_pairs=layer_module.DECODE_MAX_PAIRS + 1), TC_GATE_UP, _TC_DOWN,
                 dict(_TC_DOWN, overlap_max_pairs=0), dict(_TC_DOWN, down_mma_stages=2),
                 dict(_TC_DOWN, down_mma_stages=4), dict(_TC_DOWN, down_block_n=32),
                 dict(_TC_DOWN, down_block_n=64, down_mma_warps=2)]
# gate_up in fewer, resident programs: with the overlap, SiLU and down launch once every gate_up program has
# started, so a gate_up grid of more than one resident wave (the default, 16 programs of 8 warps per SM)
# keeps down's early weight loads back until its last wave; with at most 32 warps of gate_up per SM, down's
# programs can be resident from the start and its weights stream alongside gate_up's
LAYER_CONFIGS += [dict(programs_per_sm=p, gate_up_warps=w) for p, w in ((4, 8), (2, 8), (8, 4), (6, 4), (4, 4))]
# every column of I in one load in the CUDA-core down kernel: all of a program's weights requested before its
# wait for the SiLU step, so they stream while gate_up runs (the default loads 128 columns before the wait)
LAYER_CONFIGS += [dict(down_i_chunk=512), dict(down_i_chunk=512, down_warps=8), dict(down_i_chunk=512, down_block_n=8)]
# both: gate_up in one resident wave and down's weights all requested before its wait, so that they stream
# while gate_up's programs run
LAYER_CONFIGS += [dict(programs_per_sm=p, gate_up_warps=w, down_i_chunk=512) for p, w in ((4, 8), (8, 4), (6, 4))]


def _write_csv(path, rows):
    if path and rows:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)


def _cases(batches, device):
    """(model, batch, the layer's arguments, its reference output, the layer's tolerance) per model and batch."""
    for model in MODELS:
        weights = make_weights(model, device)
        for batch in batches:
            hidden, topk_weights, topk_ids = make_batch(model, batch, device)
            args = (hidden, *weights, topk_weights, topk_ids)
            yield model, batch, args, fused_moe_fp8_reference(*args).float(), layer_tolerance(device)


def _plain_read_us(nbytes, device):
    buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    return time_us(lambda: buf.sum(), device, quick=True)


def sweep(batches, csv_path):
    device = torch.device("cuda")
    rows = []
    for model, batch, args, reference, tol in _cases(batches, device):
        shape, topk_ids = layer_module.check_moe_inputs(*args), args[-1]
        pairs = batch * model.topk
        nbytes = {"gate_up": pairs * 2 * model.intermediate * model.hidden, "down": pairs * model.hidden * model.intermediate}
        for kernel, configs in (("gate_up", GATE_UP), ("down", DOWN)):
            plain = _plain_read_us(nbytes[kernel], device)
            print(f"{model.name} T={batch} {kernel}: {nbytes[kernel] / 1e6:.1f} MB; torch.sum of as many bytes "
                  f"{plain:.1f} µs ({nbytes[kernel] / plain / 1e3:.0f} GB/s)", flush=True)
            results = []
            for fields in configs:
                config = layer_module.DecodeConfig(**fields)
                try:
                    plan = layer_module._DecodePlan(shape, topk_ids.dtype, config=config)
                    out = plan(*args)
                    errors = relative_errors(out.float(), reference)
                    inter = layer_module._Intermediates(plan.regions, plan.nbytes, device)
                    gate_up, silu, down = plan.launches(inter, out, *args)
                    for launch, ptrs, tensors in (gate_up, silu):  # the down step's inputs
                        launch(ptrs, tensors)
                    launch, ptrs, tensors = gate_up if kernel == "gate_up" else down
                    us = time_us(lambda: launch(ptrs, tensors), device, quick=True)
                except Exception as exc:  # out of shared memory or registers
                    print(f"  {fields}: {type(exc).__name__}: {str(exc)[:80]}")
                    continue
                ok = errors[0] <= tol[0] and errors[1] <= tol[1]
                results.append((us, fields, ok, plan.splits))
                rows.append(dict(model=model.name, batch=batch, kernel=kernel, **fields, splits=plan.splits,
                                 us=us, gbps=nbytes[kernel] / us / 1e3, plain_us=plain, ok=ok))
            results.sort(key=lambda r: r[0])
            default = [r for r in results if all(getattr(layer_module.DECODE_CONFIG, k) == v for k, v in r[1].items())]
            for us, fields, ok, splits in results[:5] + default:
                print(f"  {us:8.1f} µs {nbytes[kernel] / us / 1e3:6.0f} GB/s splits {splits:3d} {fields}{'' if ok else ' !'}"
                      + ("  (default)" if default and fields == default[0][1] else ""), flush=True)
    _write_csv(csv_path, rows)


def layer_sweep(batches, csv_path):
    device = torch.device("cuda")
    flush, rows = L2Flush(device), []
    for model, batch, args, reference, tol in _cases(batches, device):
        shape, topk_ids = layer_module.check_moe_inputs(*args), args[-1]
        for fields in LAYER_CONFIGS:
            plan = layer_module._DecodePlan(shape, topk_ids.dtype, config=layer_module.DecodeConfig(**fields))
            errors = relative_errors(plan(*args).float(), reference)
            ok = errors[0] <= tol[0] and errors[1] <= tol[1]
            us = median_us(capture(lambda: plan(*args)).replay, "kernel", flush, 200)
            rows.append(dict(model=model.name, batch=batch, **fields, us=us, ok=ok))
            print(f"{model.name} T={batch} {us:7.1f} µs {fields or 'default'}{'' if ok else ' !'}", flush=True)
    _write_csv(csv_path, rows)


# the first GEMM reading scattered copies of each token's row, or gathering the one row (which takes a native
# mode); or in the native mode without gathering (at k = 7168 es_mode takes the CUTLASS tables otherwise)
GATHER_VARIANTS = {"scattered": dict(gather=False), "gathered": dict(gather=True),
                   "gate-up native": dict(gather=False, cutlass_modes=("native", None))}


def grouped_ab(batches, csv_path, variants):
    """Each variant (name: _LayerPlan's keywords) of the grouped pipeline, backend auto, in kernel mode, two
    rounds of opposite order, the faster kept; each checked against the layer's reference; then each
    plan's kernels by the profiler."""
    device = torch.device("cuda")
    flush, rows = L2Flush(device), []
    for model, batch, args, reference, tol in _cases(batches, device):
        shape, topk_ids = layer_module.check_moe_inputs(*args), args[-1]
        plans = {name: layer_module._LayerPlan(shape, topk_ids.dtype, "auto", **kw) for name, kw in variants.items()}
        errors = {name: relative_errors(plan(*args).float(), reference) for name, plan in plans.items()}
        best = {}
        for name in (*plans, *reversed(plans)):
            us = median_us(capture(lambda: plans[name](*args)).replay, "kernel", flush, 200)
            best[name] = min(us, best.get(name, us))
        for name, plan in plans.items():
            ok = errors[name][0] <= tol[0] and errors[name][1] <= tol[1]
            rows.append(dict(model=model.name, batch=batch, variant=name, gather=plan.gather, us=best[name], ok=ok))
            print(f"{model.name} T={batch} {best[name]:7.1f} µs {name} (gathered {plan.gather}){'' if ok else ' !'}",
                  flush=True)
            for kernel, per_call, us in kernel_breakdown(lambda: plan(*args)):
                print(f"    {us:8.1f} µs  x{per_call:<4g} {kernel[:100]}")
    _write_csv(csv_path, rows)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--csv")
    parser.add_argument("--layer", action="store_true", help="the whole decode path per LAYER_CONFIGS")
    parser.add_argument("--gather", action="store_true",
                        help="the grouped pipeline, rows scattered or gathered (GATHER_VARIANTS)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.gather:
        grouped_ab(batches, args.csv, GATHER_VARIANTS)
    else:
        (layer_sweep if args.layer else sweep)(batches, args.csv)


if __name__ == "__main__":
    main()

"""CPU time of one eager call on a small problem: es_dual's backends, where the CUTLASS path spends it, the
peers on the same problem, and the MoE layer.

Host time per call: the wall time of a batch of back-to-back calls, started on an idle GPU and short enough
that the launch queue never fills (so the GPU's time cannot hold the host back); each row's best over
rounds through all rows, interleaved so that the host's drift affects every row alike.
The MoE layer's rows also get their GPU time per call (kernel mode, as the layer benchmark times it: one
call captured in a CUDA graph and replayed, the L2 flushed before each replay), to show what the path
that `auto` takes costs on the device too.
python benchmarks/host_overhead.py [--calls 50] [--rounds 5] [--peers DIR]   (DIR: as es_dual.bench --peers)
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import es_dual  # noqa: E402
from es_dual.bench import layer  # noqa: E402
from es_dual.bench.timing import L2Flush, capture, median_us  # noqa: E402
from es_dual.bench.providers import PEERS, PROVIDERS, Unavailable, add_peer_paths, describe  # noqa: E402
from es_dual import ops  # noqa: E402
from es_dual.cutlass import buckets, launch, loader  # noqa: E402
from es_dual.dispatch import launch_for, select_backend  # noqa: E402
from es_dual.problem import check_call, check_inputs  # noqa: E402
from es_dual.triton_ref import launch as triton_launch  # noqa: E402
from support import make_inputs  # noqa: E402

COUNTS, N, K = [4, 0, 3, 1, 2, 0, 5, 1], 256, 512  # 16 rows, 8 experts: microseconds of GPU work
LAYER = layer.LayerModel("small", num_experts=8, topk=2, hidden=512, intermediate=256)


def per_call_us(fn, calls: int, repeats: int = 3) -> float:
    """Host time per call: the best of `repeats` batches of `calls` back-to-back calls, each batch
    started on an idle GPU and short enough (a few hundred launches) that the launch queue never fills,
    so the GPU's own time cannot hold the host back."""
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    torch.cuda.synchronize()
    return 1e6 * best / calls


def measure(rows, calls: int, rounds: int) -> dict:
    """Each row's best over `rounds` rounds through all rows, every other round in reverse order: the
    host's speed drifts by tens of percent within a minute on the GPU machine, so rows timed far apart
    are not comparable, and interleaving puts every row under the same drift."""
    best = {}
    timed = [(name, fn) for name, fn in rows if fn]
    for r in range(rounds):
        for name, fn in (timed if r % 2 == 0 else timed[::-1]):
            best[name] = min(best.get(name, float("inf")), per_call_us(fn, calls))
    return best


def _noop_op(inputs, out):
    """The dispatcher's cost of a Python custom op with the grouped GEMM's schema."""
    from es_dual.ops import SCHEMA

    torch.library.define("es_dual_host_probe::noop", SCHEMA)
    torch.library.impl("es_dual_host_probe::noop", ("CPU", "CUDA"))(lambda *args: None)
    op = torch.ops.es_dual_host_probe.noop
    args = (*inputs.values(), out, "auto")
    return lambda: op(*args)


def _ctypes_probe():
    lib = loader.load_library()
    size = __import__("ctypes").c_size_t(0)
    return lambda: lib.es_dual_workspace_bytes(16, N, K, len(COUNTS), 0, 0, 132, size)


def _library_rows(inputs, out, total_m) -> list:
    """The C library alone, per mode and overlap, on a workspace allocated once."""
    lib = loader.load_library()
    ptrs = [t.data_ptr() for t in inputs.values()]
    stream = torch.cuda.current_stream().cuda_stream
    sm_count = launch._sm_count(0)
    rows = []
    for mode in ("es", "single", "native"):
        code = launch.mode_code(mode)
        ws = torch.empty(launch.workspace_bytes(total_m, N, K, len(COUNTS), 0, code, sm_count),
                         dtype=torch.uint8, device="cuda")
        overlaps = buckets.OVERLAPS if buckets.fused_kernel(dict(buckets.MODES)[mode]) is None else {0: "none"}
        for overlap, name in overlaps.items():
            call = (lambda code=code, overlap=overlap, ws=ws: lib.es_dual_grouped_gemm(
                ptrs[0], ptrs[1], 0, None, ptrs[2], ptrs[3], ptrs[4], 0, 0, out.data_ptr(), total_m, N, K, len(COUNTS), 0,
                code, overlap, 0, sm_count, ws.data_ptr(), ws.numel(), stream))
            rows.append((f"C library alone, mode {mode}, overlap {name}", call))
    return rows


def _peer_rows(inputs) -> list:
    """Each peer's prepared call (what its users time), or why it cannot run here."""
    problem = check_inputs(**inputs)
    rows = []
    for name in PEERS:
        try:
            rows.append((f"peer {name}", PROVIDERS[name].prepare(problem, inputs).run))
        except Unavailable as exc:
            rows.append((f"peer {name}: unavailable ({exc})", None))
        except Exception as exc:  # a peer whose API differs from the one the adapter was written for
            rows.append((f"peer {name}: failed ({describe(exc)})", None))
    return rows


def _masked_rows(inputs) -> list:
    """es_dual.grouped_gemm_fp8_masked on the same experts in the masked layout (max_m = the largest count)."""
    max_m = max(COUNTS)
    a = torch.zeros(len(COUNTS), max_m, K, dtype=inputs["a"].dtype, device="cuda")
    a_scale = torch.ones(len(COUNTS), max_m, inputs["a_scale"].shape[1], device="cuda")
    masked_m = torch.tensor(COUNTS, dtype=torch.int32, device="cuda")
    out = torch.empty(len(COUNTS), max_m, N, dtype=torch.bfloat16, device="cuda")
    return [("es_dual.grouped_gemm_fp8_masked(backend='auto')",
             lambda: es_dual.grouped_gemm_fp8_masked(a, a_scale, inputs["b"], inputs["b_scale"], masked_m, out=out))]


def _layer_rows(device) -> list:
    """fused_moe_fp8 at one token and at 16 tokens, per backend."""
    w13, w13_scale, w2, w2_scale = layer.make_weights(LAYER, device)
    rows = []
    for batch in (1, 16):
        hidden, topk_weights, topk_ids = layer.make_batch(LAYER, batch, device)
        for backend in ("auto", "triton"):
            rows.append((f"es_dual.fused_moe_fp8(backend={backend!r}), {batch} token(s)",
                         lambda hidden=hidden, w=topk_weights, ids=topk_ids, backend=backend: es_dual.fused_moe_fp8(
                             hidden, w13, w13_scale, w2, w2_scale, w, ids, backend=backend)))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50, help="calls per batch (3 batches per round)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds through all rows (each row's best kept)")
    parser.add_argument("--peers", default=os.environ.get("ES_DUAL_PEERS", ".peers"))
    args = parser.parse_args()
    add_peer_paths(args.peers)
    device = torch.device("cuda", 0)
    inputs = make_inputs(COUNTS, N, K, seed=0, device="cuda")
    total_m = sum(COUNTS)
    out = torch.empty(total_m, N, dtype=torch.bfloat16, device="cuda")
    problem = check_inputs(**inputs, out=out)
    backends = es_dual.available_backends(device)
    small = torch.zeros(16, device="cuda")
    rows = [
        ("torch: one small kernel (Tensor.zero_)", small.zero_),
        ("torch.ops: a Python custom op that does nothing", _noop_op(inputs, out)),
        ("ctypes: es_dual_workspace_bytes (8 arguments, no CUDA call)", _ctypes_probe()),
        ("check_inputs", lambda: check_inputs(**inputs, out=out)),
        ("check_call (the op's check: check_inputs and the data pointers)", lambda: check_call(*inputs.values(), out)),
        ("select_backend", lambda: select_backend(problem, backends[0])),
        ("launch_for (the op's choice: a planned launch per call size)", lambda: launch_for(problem, torch.int32, "auto")),
        ("torch.empty (workspace)", lambda: torch.empty(4096, dtype=torch.uint8, device="cuda")),
    ]
    if "cutlass" in backends:
        rows += _library_rows(inputs, out, total_m)
        planned_cutlass = launch.plan_cutlass(problem, torch.int32)
        cutlass_ptrs = check_call(*inputs.values(), out)[1]
        rows.append((f"CUTLASS: planned launch (Python + C, mode {buckets.es_mode(total_m, N, K, len(COUNTS))})",
                     lambda: planned_cutlass(cutlass_ptrs, None)))
    if "triton" in backends:
        planned, tensors = triton_launch.plan_triton(problem), (*inputs.values(), out)
        rows.append(("Triton: kernel[grid] (Triton's own launch path, same call)",
                     lambda: planned.fn[planned.grid](*tensors, **planned.constants, **planned.options)))
        ptrs = check_call(*tensors)[1]
        rows.append(("Triton: planned launch (direct after the first)", lambda: planned(ptrs, lambda: tensors)))
    rows.append(("torch.ops.es_dual.grouped_gemm_fp8 (the op without the Python API around it)",
                 lambda: torch.ops.es_dual.grouped_gemm_fp8(*inputs.values(), out, "auto")))
    op_tensors = (*inputs.values(), out)
    rows.append(("ops.dispatcher_adds_nothing (the probes of the bypass)",
                 lambda: ops.dispatcher_adds_nothing(op_tensors)))
    rows.append(("ops._grouped_gemm_fp8 (the op's implementation, called straight)",
                 lambda: ops._grouped_gemm_fp8(*op_tensors, "auto")))
    for backend in ("auto", *(b for b in backends if b != "reference")):
        rows.append((f"es_dual.grouped_gemm_fp8(backend={backend!r})",
                     lambda backend=backend: es_dual.grouped_gemm_fp8(**inputs, out=out, backend=backend)))
    layer_rows = _layer_rows(device)
    rows += _masked_rows(inputs) + _peer_rows(inputs) + layer_rows
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; problem: {len(COUNTS)} experts, "
          f"{total_m} rows, n = {N}, k = {K}; layer: {LAYER}")
    best = measure(rows, args.calls, args.rounds)
    for name, fn in rows:
        value = f"{best[name]:7.1f} us/call" if fn else ""
        print(f"host overhead  {name:<64} {value}", flush=True)
    flush = L2Flush(device)
    for name, fn in layer_rows:
        gpu = median_us(capture(fn).replay, "kernel", flush, 200)
        print(f"GPU time       {name:<64} {gpu:7.1f} us/call (kernel mode)", flush=True)


if __name__ == "__main__":
    main()

"""Timing and the ceilings (copy bandwidth, FP8 matrix rate) that define a workload's floor.

The grouped-GEMM benchmark times every provider in two modes (MODES):

- kernel: the call is captured once in a CUDA graph (on a side stream, after warm-up calls, as torch
  requires) and the graph is replayed. Before each replay the L2 is flushed (a buffer of at least twice
  the L2 is read: L2Flush); the start event is recorded after the flush, the end event after the replay,
  so a sample is the GPU time of the replay alone, with a cold L2. The host enqueues ahead, so host time is
  not in it. Reported: the median of the samples.
- eager: plain Python calls of the provider, back to back, as a caller's loop makes them: after a
  synchronize, the start event, EAGER_BATCH calls, the end event; a sample is the batch time over the
  number of calls. The host enqueues call i+1 while the GPU runs call i, so a call costs its GPU time
  when that is longer than its host time, and its host time otherwise: what a Python caller pays per
  call. No flush between calls (it would be a kernel in the batch); the public workloads move 4 to 20
  times the 50 MB L2 per call, so each call still finds its weights outside the L2. Reported: the
  median over batches.

Before a provider is timed in a mode, it runs back to back for at least WARM_UP_S (the SM clock ramps
up from idle over milliseconds; a 5-call warm-up read up to 10 % slow).
"""
from __future__ import annotations

import math
import statistics
import time

import torch

MODES = {
    "kernel": "CUDA-graph replay of one call, L2 flushed before each replay, events around the replay "
              "(GPU time only); median",
    "eager": "plain Python calls back to back (host time included where it exceeds the GPU time): "
             "events around a batch of calls, per call; median over batches",
}

WARM_UP_S = 0.1

# Published figures, for floors on a machine that has no GPU to measure them: (bytes/s, dense FP8 FLOP/s).
DATASHEETS = {
    "H100 SXM": (3.35e12, 1979e12),
    "H200": (4.8e12, 1979e12),
}


def time_us(fn, device: torch.device, quick: bool = False) -> float:
    """Median time of one call in microseconds. On a GPU: CUDA events, the L2 flushed before every call
    (triton.testing.do_bench); on the CPU: wall clock around a synchronous call."""
    if device.type == "cuda":
        import triton.testing

        warmup, rep = (5, 20) if quick else (25, 200)
        return 1e3 * triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    fn()
    samples = []
    for _ in range(1 if quick else 3):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return 1e6 * statistics.median(samples)


def better_round(*us: float) -> float:
    """The lower of the rounds' times (NaN for a round that has none): the runs differ only in what ran
    before them, and the lower one is the less disturbed."""
    values = [u for u in us if not math.isnan(u)]
    return min(values) if values else math.nan


class L2Flush:
    """Reading a buffer of at least twice the L2 evicts whatever a previous call left there, and leaves
    the L2 full of clean lines, as a serving step finds it (mostly weights, which are only read).

    A flush that writes (zeroing the buffer) leaves up to the L2's size of dirty lines, which the timed
    call then pays to write back as it reads: on the H200 machine that added 2.6 µs to a 29 MB read and
    8 µs to reads of 118 MB and more (benchmarks/flush_probe.py; docs/perf-notes.md, 2026-12-01)."""

    def __init__(self, device: torch.device, min_bytes: int = 256 << 20):
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        self.buffer = torch.zeros(max(min_bytes, 2 * l2) // 4, dtype=torch.float32, device=device)
        self.total = torch.empty((), dtype=torch.float32, device=device)

    def __call__(self) -> None:
        torch.sum(self.buffer, dim=0, out=self.total)


def warm_up(fn, seconds: float = WARM_UP_S) -> None:
    """Back-to-back calls until at least `seconds` of them have completed on the GPU."""
    start, calls = time.perf_counter(), 1
    while True:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        if time.perf_counter() - start >= seconds:
            return
        calls *= 2


def capture(fn, keep_graph: bool = False) -> torch.cuda.CUDAGraph:
    """fn captured in a CUDA graph; the warm-up calls run on a side stream, as torch requires.
    keep_graph: keep the captured cudaGraph_t (raw_cuda_graph) after instantiating it, to count its nodes."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    try:
        graph = torch.cuda.CUDAGraph(keep_graph=keep_graph)
    except TypeError:  # a torch without keep_graph: the graph is not kept (raw_cuda_graph raises)
        graph, keep_graph = torch.cuda.CUDAGraph(), False
    with torch.cuda.graph(graph):
        fn()
    if keep_graph:
        graph.instantiate()
    torch.cuda.synchronize()
    return graph


EAGER_BATCH = 20  # calls per eager sample


def median_us(fn, mode: str, flush: L2Flush, reps: int) -> float:
    """Warm-up, then samples of fn as MODES says: `reps` graph replays (kernel), or batches of
    EAGER_BATCH back-to-back calls (eager, reps // EAGER_BATCH batches, at least 3)."""
    warm_up(fn)
    if mode == "eager":
        samples = []
        for _ in range(max(3, reps // EAGER_BATCH)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(EAGER_BATCH):
                fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / EAGER_BATCH)
        return 1e3 * statistics.median(samples)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        flush()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return 1e3 * statistics.median(start.elapsed_time(end) for start, end in events)


def _best_of(measure, runs: int = 3) -> float:
    """The largest of a few measurements: the clocks ramp up after idling, a ceiling is what the card can do."""
    return max(measure() for _ in range(runs))


def copy_bandwidth(device: torch.device, nbytes: int = 2 << 30) -> float:
    """Bytes per second of a large device-to-device copy, counting the read and the write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    return _best_of(lambda: 2 * nbytes / (time_us(lambda: dst.copy_(src), device) * 1e-6))


def fp8_matmul_rate(device: torch.device, size: int = 8192) -> float:
    """FLOP per second of a large FP8 product through torch._scaled_mm (cuBLAS), random data."""
    a = torch.randn(size, size, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(size, size, device=device).to(torch.float8_e4m3fn)
    one = torch.tensor(1.0, device=device)
    fn = lambda: torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    return _best_of(lambda: 2 * size**3 / (time_us(fn, device) * 1e-6))

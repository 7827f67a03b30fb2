"""Timing and the two ceilings (copy bandwidth, FP8 matrix rate) that define a workload's floor."""
from __future__ import annotations

import statistics
import time

import torch


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

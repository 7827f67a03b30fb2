"""What the L2 flush before a timed call costs that call (GPU): reads of a few sizes, timed with CUDA events
after a flush that zeroes a buffer of 2x the L2 (dirty lines left behind) and after one that reads it
(es_dual.bench.timing.L2Flush: clean lines). python benchmarks/flush_probe.py
"""
import statistics

import torch

from es_dual.bench.timing import L2Flush


def main():
    device = torch.device("cuda")
    read_flush = L2Flush(device)
    dirty = torch.empty(read_flush.buffer.numel() * 4, dtype=torch.uint8, device=device)
    flushes = {"zeroing flush": dirty.zero_, "reading flush": read_flush}
    for mb in (15, 29, 118, 235):
        buf = torch.ones(mb * (1 << 20) // 4, device=device)
        line = f"read of {mb:4d} MB (torch.sum):"
        for name, flush in flushes.items():
            samples = []
            for _ in range(60):
                flush()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                buf.sum()
                end.record()
                torch.cuda.synchronize()
                samples.append(1e3 * start.elapsed_time(end))
            us = statistics.median(samples[10:])
            line += f"  {name} {us:6.1f} µs ({mb * (1 << 20) / us / 1e3:5.0f} GB/s)"
        print(line, flush=True)


if __name__ == "__main__":
    main()

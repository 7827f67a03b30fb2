"""Where the MoE layer's host time per call goes (GPU machine): cProfile over back-to-back eager calls of
host_overhead.py's small layer, whose GPU work is shorter than its host time (on a real model's shape the
launch queue fills and the host waits on the GPU, so the profile shows the GPU's time).

python benchmarks/profile_layer_host.py [--tokens 16] [--backend auto] [--calls 2000]
"""
import argparse
import cProfile
import pstats
import time

import torch

from es_dual.bench.layer import make_batch, make_weights
from es_dual.moe import fused_moe_fp8
from host_overhead import LAYER  # this script's folder is first on sys.path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    model = LAYER
    weights = make_weights(model, "cuda")
    hidden, topk_weights, topk_ids = make_batch(model, args.tokens, "cuda")
    call = lambda: fused_moe_fp8(hidden, *weights, topk_weights, topk_ids, backend=args.backend)
    for _ in range(50):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.calls):
        call()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    print(f"{model.name} T={args.tokens} backend={args.backend}: {1e6 * host / args.calls:.1f} µs of host per call (no profiler)")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.calls):
        call()
    profiler.disable()
    torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()

"""The layer's routing step alone (GPU): route_by_rank (one launch), route_by_chunks (two) and route_by_sort
(torch's sort), µs per call in both timing modes, over the pair counts of decode steps and prefills, each
way on every size where it runs (to place layer.ROUTE_BY_RANK_PAIRS). Uniform routing, some ids out of
range. python benchmarks/route_bench.py [--experts 256,128] [--pairs 8,64,...]
"""
import argparse

import torch

from es_dual.bench.timing import L2Flush, capture, median_us
from es_dual.moe.layer import route_by_chunks, route_by_rank, route_by_sort


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experts", default="256,128")
    parser.add_argument("--pairs", default="8,64,256,512,1024,2048,4096,8192,16384,32768")
    args = parser.parse_args()
    device = torch.device("cuda")
    flush = L2Flush(device)
    print(f"{'experts':>7} {'pairs':>6} {'way':<8} {'kernel us':>9} {'eager us':>9}")
    for experts in map(int, args.experts.split(",")):
        for pairs in map(int, args.pairs.split(",")):
            ids = torch.randint(-1, experts + 1, (pairs // 8, 8), device=device)
            want = route_by_sort(ids, experts)
            for name, fn in (("rank", route_by_rank), ("chunks", route_by_chunks), ("sort", route_by_sort)):
                if name == "rank" and (experts + 1) * pairs >= 2**31:  # its keys are int32
                    continue
                got = fn(ids, experts)
                ok = torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
                graph = capture(lambda: fn(ids, experts))
                kernel = median_us(graph.replay, "kernel", flush, 200)
                eager = median_us(lambda: fn(ids, experts), "eager", flush, 200)
                print(f"{experts:>7} {pairs:>6} {name:<8} {kernel:9.1f} {eager:9.1f}{'' if ok else '  WRONG'}",
                      flush=True)


if __name__ == "__main__":
    main()

"""Boundary cases for compute-sanitizer: every fast backend on routings that touch every edge.

Run under each tool by benchmarks/sanitize.sh. Exits non-zero when a result differs from the reference.
Usage: sanitize_cases.py [BACKEND ...] (default: every fast backend available on the GPU);
sanitize_cases.py --list prints that default.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from es_dual.cutlass import buckets  # noqa: E402
from es_dual.dispatch import available_backends  # noqa: E402
from support import assert_matches, make_inputs, reference64, run_backend  # noqa: E402

GPU = torch.device("cuda", 0)
edges = sorted({max(0, b + d) for b in (*buckets.boundaries(), 16, 64, 128) for d in (-1, 0, 1)})
CASES = [  # (counts, n, k): zero-token experts, every boundary +-1, one expert with all, tails of n and k
    ([0, 0, 0], 128, 128),
    (edges, 256, 384),
    ([0] * 7 + [300], 384, 256),
    ([1] * 40, 128, 1024),
    ([5, 0, 70, 200, 0, 33], 144, 272),
    # k <= 256 (the small-k table's 2x1 clusters) with enough tiles that every CTA of the persistent grid
    # takes three or more, so each shared-memory stage is written again after it was read
    ([20] * 24 + [50] * 24, 4096, 256),
]


def fast_backends() -> list[str]:
    return [b for b in ("cutlass", "cutlass_single", "triton") if b in available_backends(GPU)]


def main():
    if sys.argv[1:] == ["--list"]:  # for sanitize.sh: one tool run per backend
        print(*fast_backends())
        return
    backends = sys.argv[1:] or fast_backends()
    for counts, n, k in CASES:
        inputs = make_inputs(counts, n, k, seed=len(counts), device=GPU)
        ref = reference64(inputs)
        for backend in backends:
            for dtype in (torch.bfloat16, torch.float16):
                assert_matches(run_backend(inputs, dtype, backend), ref)
    torch.cuda.synchronize()
    print(f"sanitize_cases: {len(CASES)} routings x {backends} x bf16/fp16: all match the reference")


if __name__ == "__main__":
    main()

"""Is the weighted un-permute worth fusing into the down GEMM's epilogue? (GPU; issue 14 at T >= 1024.)

Today the down GEMM stores one bf16 row per pair ((T * topk, H), grouped by expert) and the un-permute reads
them back: 2 x T * topk * H * 2 bytes through DRAM. A fused epilogue would add weight x row into the token's
output row instead (red.global.add), so only the (T, H) output moves, if the adds stay in L2. They can: a
tile order that walks the output by column stripes (all experts' tiles of one N block, then the next) keeps
one stripe of T x BLOCK_H values hot at a time (T = 4096, 128 columns: 1 MB bf16, 2 MB float32).

Each variant here reads its values from a small L2-resident tile (as an epilogue holds them in registers) and
is timed in both modes on the layer's shapes (random routing, pairs grouped by expert):
  store+unpermute  rows stored per pair (the GEMM's store today), then es_dual's un-permute kernel
  red_f32_nmajor   float32 adds into a zeroed (T, H) buffer, stripe by stripe, then the cast to bf16
  red_bf16_nmajor  bf16 adds into the zeroed output, stripe by stripe (no cast; 8 roundings per value)
  red_f32_mmajor   float32 adds in the GEMM's usual order (expert by expert, all columns), then the cast
  stripes_W        the store and the un-permute alternating by column stripes of W: each stripe's rows go
                   into one (T * topk, W) buffer, reused, which the un-permute reads back while it is still
                   in the L2 (if the L2 keeps it, the stored rows never reach DRAM); each stripe's store also
                   streams that stripe's down weights (T * topk / 32 rows x W x I bytes, as a GEMM would)
python benchmarks/scatter_add_bench.py [--shapes "T,H,E,topk;..."]
"""
import argparse

import torch
import triton
import triton.language as tl

from es_dual.bench.timing import L2Flush, capture, median_us
from es_dual.moe.kernels import unpermute_sum_kernel
from es_dual.moe.layer import route_by_sort, unpermute_sum

SRC_ROWS = 128  # the values' source: one tile's worth of rows, L2-resident


@triton.jit
def store_rows_kernel(src_ptr, out_ptr, rows, hidden, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = (r < rows)[:, None] & (c < hidden)[None, :]
    v = tl.load(src_ptr + (r % 128)[:, None] * hidden + c[None, :], mask=ok)
    tl.store(out_ptr + r.to(tl.int64)[:, None] * hidden + c[None, :], v, mask=ok)


@triton.jit
def store_stripe_kernel(src_ptr, weight_ptr, out_ptr, rows, width, src_stride, weight_row_bytes, weight_rows,
                        BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, I: tl.constexpr):
    """store_rows_kernel on a (rows, width) buffer, each program also reading BLOCK_H rows of I weight bytes
    (evict-first, as the GEMM streams them) and folding one bit of them into its values (kept live)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    wrow = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * BLOCK_H % weight_rows
    w = tl.load(weight_ptr + (wrow + tl.arange(0, BLOCK_H)).to(tl.int64)[:, None] * weight_row_bytes
                + tl.arange(0, I)[None, :], eviction_policy="evict_first")
    bit = (tl.sum(w.to(tl.int32), axis=1) & 1).to(tl.float32)
    ok = (r < rows)[:, None] & (c < width)[None, :]
    v = tl.load(src_ptr + (r % 128)[:, None] * src_stride + c[None, :], mask=ok).to(tl.float32) + 0.0 * bit[None, :]
    tl.store(out_ptr + r.to(tl.int64)[:, None] * width + c[None, :], v.to(tl.bfloat16), mask=ok)


@triton.jit
def red_rows_kernel(src_ptr, row_token_ptr, row_weight_ptr, out_ptr, rows, hidden, row_blocks, col_blocks,
                    N_MAJOR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    if N_MAJOR:
        rb, cb = pid % row_blocks, pid // row_blocks
    else:
        rb, cb = pid // col_blocks, pid % col_blocks
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    c = cb * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = (r < rows)[:, None] & (c < hidden)[None, :]
    v = tl.load(src_ptr + (r % 128)[:, None] * hidden + c[None, :], mask=ok).to(tl.float32)
    token = tl.load(row_token_ptr + r, mask=r < rows, other=0).to(tl.int64)
    weight = tl.load(row_weight_ptr + r, mask=r < rows, other=0.0)
    v = v * weight[:, None]
    tl.atomic_add(out_ptr + token[:, None] * hidden + c[None, :], v.to(out_ptr.dtype.element_ty), mask=ok,
                  sem="relaxed")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1024,7168,256,8;4096,7168,256,8;4096,4096,128,8")
    args = parser.parse_args()
    device = torch.device("cuda")
    flush = L2Flush(device)
    block_r, block_h = 64, 128
    print(f"{'T':>5} {'H':>5} {'E':>4} {'variant':<16} {'kernel us':>9} {'eager us':>9} {'max_rel':>8}")
    for shape in args.shapes.split(";"):
        tokens, hidden, experts, topk = map(int, shape.split(","))
        torch.manual_seed(0)
        ids = torch.stack([torch.randperm(experts, device=device)[:topk] for _ in range(tokens)]).to(torch.int32)
        weights = torch.rand(tokens, topk, device=device)
        offsets, pair_rows = route_by_sort(ids, experts)[:2]
        pairs = tokens * topk
        row_pair = torch.empty(pairs, dtype=torch.int64, device=device)
        row_pair[pair_rows.long()] = torch.arange(pairs, device=device)
        row_token = (row_pair // topk).to(torch.int32)
        row_weight = weights.flatten()[row_pair].contiguous()
        src = torch.randn(SRC_ROWS, hidden, device=device).to(torch.bfloat16)
        down = torch.empty(pairs, hidden, dtype=torch.bfloat16, device=device)
        out32 = torch.empty(tokens, hidden, dtype=torch.float32, device=device)
        out16 = torch.empty(tokens, hidden, dtype=torch.bfloat16, device=device)
        row_blocks, col_blocks = triton.cdiv(pairs, block_r), triton.cdiv(hidden, block_h)

        def stored():
            store_rows_kernel[(row_blocks, col_blocks)](src, down, pairs, hidden, BLOCK_R=block_r, BLOCK_H=block_h)
            return unpermute_sum(down, pair_rows, weights, ids, experts)

        def red(out, n_major):
            def call():
                out.zero_()
                red_rows_kernel[(row_blocks * col_blocks,)](src, row_token, row_weight, out, pairs, hidden,
                                                            row_blocks, col_blocks, N_MAJOR=n_major,
                                                            BLOCK_R=block_r, BLOCK_H=block_h)
                return out if out.dtype == torch.bfloat16 else out.to(torch.bfloat16)
            return call

        # The down weights a GEMM streams (E experts x H rows x I = 256 bytes), read stripe by stripe.
        inter = 256
        wts = torch.randint(0, 256, (experts * hidden, inter), dtype=torch.uint8, device=device)

        def stripes(width):
            buf = torch.empty(pairs, width, dtype=torch.bfloat16, device=device)
            out = torch.empty(tokens, hidden, dtype=torch.bfloat16, device=device)
            def call():
                for s0 in range(0, hidden, width):
                    w = min(width, hidden - s0)
                    store_stripe_kernel[(triton.cdiv(pairs, 128), triton.cdiv(w, block_h))](
                        src[:, s0:], wts[s0 * experts:], buf, pairs, w, hidden, inter, experts * w,
                        BLOCK_R=128, BLOCK_H=block_h, I=inter)
                    unpermute_sum_kernel[(tokens, triton.cdiv(w, min(w, 1024)))](
                        buf, pair_rows, ids, weights, out[:, s0:], tokens, w, topk, experts, w, hidden,
                        BLOCK_T=1, BLOCK_H=min(w, 1024), INTERPRETER=False)
                return out
            return call

        def stored_full():
            store_stripe_kernel[(triton.cdiv(pairs, 128), col_blocks)](src, wts, down, pairs, hidden, hidden, inter,
                                                                       experts * hidden, BLOCK_R=128, BLOCK_H=block_h,
                                                                       I=inter)
            return unpermute_sum(down, pair_rows, weights, ids, experts)

        want = stored().float()
        variants = [("store+unpermute", stored), ("red_f32_nmajor", red(out32, True)),
                    ("red_bf16_nmajor", red(out16, True)), ("red_f32_mmajor", red(out32, False)),
                    ("full+weights", stored_full)]
        variants += [(f"stripes_{w}", stripes(w)) for w in (128, 256, 512, 1024)]
        for name, fn in variants:
            got = fn().float()
            max_rel = ((got - want).abs().max() / want.abs().max()).item()
            graph = capture(fn)
            kernel = median_us(graph.replay, "kernel", flush, 100)
            eager = median_us(fn, "eager", flush, 100)
            print(f"{tokens:>5} {hidden:>5} {experts:>4} {name:<16} {kernel:9.1f} {eager:9.1f} {max_rel:8.1e}",
                  flush=True)


if __name__ == "__main__":
    main()

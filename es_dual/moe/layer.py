"""fused_moe_fp8: the expert block of an MoE layer on es_dual's grouped GEMM, on the device, sync-free.

    route               expert_offsets,        <- a stable sort of the (token, k) pairs by expert id (ranks
                                                  counted on the device, see route);
                        pair_rows                 pair_rows[t * topk + k] = the grouped row of pair (t, k)
    quantize_scatter    a, a_scale             <- each hidden row quantized once, FP8 per token and 128
                                                  columns, and stored to the grouped rows of its topk pairs
    grouped GEMM        gate_up = a @ w13[e].T                               (T*topk, 2I) bf16
    silu_mul_quantize   y, y_scale             <- SiLU(gate) * up, FP8 per token and 128 columns
    grouped GEMM        down = y @ w2[e].T                                   (T*topk, H) bf16
    unpermute_sum       out[t] = sum_k topk_weights[t, k] * down[pair_rows[t * topk + k]]

At decode sizes (backend "auto", at most DECODE_MAX_PAIRS pairs, and E / 2 of them or small experts) the layer
takes the decode path instead (decode_kernels.py, _DecodePlan): three kernels on the pairs as they come, the
GEMMs split so that every SM streams weights, with the same roundings.

The host knows only the shapes: every buffer is sized by T*topk rows, the per-expert counts stay on the
device, so a call can be captured in a CUDA graph and replayed after the routing changed.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from ..dispatch import BACKEND_NAMES, BACKENDS, launch_for, select_backend
from ..environment import getenv
from ..quant import quantize_fp8_per_token_group
from ..problem import (
    DIM_MULTIPLE, FP8, PTR_ALIGN, SCALE_BLOCK, Problem, _expect_aligned, _expect_contiguous, _expect_dtype, _expect_shape,
    _expect_tensor, cdiv, check_scales,
)

ID_DTYPES = (torch.int32, torch.int64)
# Work per program. On a GPU: 8 scale groups of 128 elements (one to eight rows) per quantizing program
# and 1024 columns of one token per summing program keep 4 warps busy with vector loads. The interpreter
# (CPU) pays per program, not per element: there, one program takes up to 64 rows or tokens whole.
GPU_UNITS, GPU_BLOCK_T, GPU_BLOCK_H = 8, 1, 1024
CPU_ROWS = 64


class MoeShape(NamedTuple):
    tokens: int
    hidden_size: int
    intermediate: int
    num_experts: int
    topk: int
    device: torch.device


def _moe_conforming(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids) -> MoeShape | None:
    """The layer's sizes when every rule of check_moe_inputs holds, else None: its per-call fast path,
    each attribute read once. It must never accept what those rules refuse; a None only sends the call
    through them, and they raise with a message."""
    T = torch.Tensor
    if not (isinstance(hidden, T) and isinstance(w13, T) and isinstance(w13_scale, T) and isinstance(w2, T)
            and isinstance(w2_scale, T) and isinstance(topk_weights, T) and isinstance(topk_ids, T)):
        return None
    try:
        tokens, hidden_size = hidden.shape
        num_experts, two_i, h13 = w13.shape
        ids_tokens, topk = topk_ids.shape
    except ValueError:  # dimensions: the rules say which
        return None
    device = hidden.device
    intermediate = two_i // 2
    if not (
        hidden.dtype == torch.bfloat16 and w13.dtype == FP8 and w13_scale.dtype == torch.float32
        and w2.dtype == FP8 and w2_scale.dtype == torch.float32 and topk_weights.dtype == torch.float32
        and topk_ids.dtype in ID_DTYPES
        and w13.device == device and w13_scale.device == device and w2.device == device
        and w2_scale.device == device and topk_weights.device == device and topk_ids.device == device
        and num_experts >= 1 and two_i > 0 and two_i % (2 * DIM_MULTIPLE) == 0
        and hidden_size > 0 and hidden_size % DIM_MULTIPLE == 0 and h13 == hidden_size
        and w13_scale.shape == (num_experts, cdiv(two_i, SCALE_BLOCK), cdiv(hidden_size, SCALE_BLOCK))
        and w2.shape == (num_experts, hidden_size, intermediate)
        and w2_scale.shape == (num_experts, cdiv(hidden_size, SCALE_BLOCK), cdiv(intermediate, SCALE_BLOCK))
        and topk >= 1 and ids_tokens == tokens and topk_weights.shape == (tokens, topk)
        and hidden.is_contiguous() and w13.is_contiguous() and w13_scale.is_contiguous() and w2.is_contiguous()
        and w2_scale.is_contiguous() and topk_weights.is_contiguous() and topk_ids.is_contiguous()
        and w13.data_ptr() % PTR_ALIGN == 0 and w2.data_ptr() % PTR_ALIGN == 0  # neither is empty here
    ):
        return None
    return MoeShape(tokens, hidden_size, intermediate, num_experts, topk, device)


def check_moe_inputs(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids) -> MoeShape:
    """Check every argument's type, dtype, device, shape and layout; return the layer's sizes.

    Raises TypeError for a wrong type or dtype and ValueError for anything else, naming the argument.
    """
    shape = _moe_conforming(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids)
    if shape is not None:
        return shape
    named = dict(hidden=hidden, w13=w13, w13_scale=w13_scale, w2=w2, w2_scale=w2_scale,
                 topk_weights=topk_weights, topk_ids=topk_ids)
    for name, t in named.items():
        _expect_tensor(name, t)
    for name, allowed in (("hidden", (torch.bfloat16,)), ("w13", (FP8,)), ("w13_scale", (torch.float32,)),
                          ("w2", (FP8,)), ("w2_scale", (torch.float32,)), ("topk_weights", (torch.float32,)),
                          ("topk_ids", ID_DTYPES)):
        _expect_dtype(name, named[name], allowed)
    device = hidden.device
    for name, t in named.items():
        if t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (the device of hidden), got one on {t.device}")
    for name, dims, meaning in (("hidden", 2, "(tokens, hidden)"),
                                ("w13", 3, "(num_experts, 2 * intermediate, hidden)"),
                                ("w2", 3, "(num_experts, hidden, intermediate)"), ("topk_ids", 2, "(tokens, topk)")):
        if named[name].dim() != dims:
            raise ValueError(f"{name}: expected {dims} dimensions {meaning}, got shape {tuple(named[name].shape)}")

    tokens, hidden_size = hidden.shape
    num_experts, two_i, _ = w13.shape
    topk = topk_ids.shape[1]
    if num_experts < 1 or two_i % (2 * DIM_MULTIPLE) or two_i == 0:
        raise ValueError(f"w13: expected shape (num_experts >= 1, 2 * intermediate, {hidden_size}) with intermediate "
                         f"a positive multiple of {DIM_MULTIPLE}, got shape {tuple(w13.shape)}")
    if hidden_size == 0 or hidden_size % DIM_MULTIPLE:
        raise ValueError(f"hidden: expected a hidden size that is a positive multiple of {DIM_MULTIPLE}, "
                         f"got shape {tuple(hidden.shape)}")
    intermediate = two_i // 2
    _expect_shape("w13", w13, (num_experts, two_i, hidden_size))
    _expect_shape("w13_scale", w13_scale, (num_experts, cdiv(two_i, SCALE_BLOCK), cdiv(hidden_size, SCALE_BLOCK)))
    _expect_shape("w2", w2, (num_experts, hidden_size, intermediate))
    _expect_shape("w2_scale", w2_scale, (num_experts, cdiv(hidden_size, SCALE_BLOCK), cdiv(intermediate, SCALE_BLOCK)))
    if topk < 1 or topk_ids.shape[0] != tokens:
        raise ValueError(f"topk_ids: expected shape ({tokens}, topk) with topk >= 1, got {tuple(topk_ids.shape)}")
    _expect_shape("topk_weights", topk_weights, (tokens, topk))
    for name, t in named.items():
        _expect_contiguous(name, t)
    for name in ("w13", "w2"):
        _expect_aligned(name, named[name])
    return MoeShape(tokens, hidden_size, intermediate, num_experts, topk, device)


def check_moe_contents(w13_scale, w2_scale, topk_ids, num_experts: int | None) -> None:
    """Opt-in host checks (they copy to the host and synchronize): expert ids in [0, E) (not checked
    when num_experts is None: ids of a whole model, of which the weights hold a range), distinct within
    each token, weight scales finite and >= 0."""
    bad = (topk_ids < 0) | (topk_ids >= num_experts) if num_experts is not None else torch.zeros(1, dtype=torch.bool)
    if bool(bad.any()):
        index = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"topk_ids: expected expert ids in [0, {num_experts}), "
                         f"got {topk_ids[index].item()} at index {index}")
    ids = topk_ids.sort(dim=1).values
    repeated = ids[:, 1:] == ids[:, :-1]
    if bool(repeated.any()):
        token, k = repeated.nonzero()[0].tolist()
        raise ValueError(f"topk_ids: expected distinct experts within a token, got expert {ids[token, k].item()} "
                         f"more than once in row {token}")
    check_scales(w13_scale=w13_scale, w2_scale=w2_scale)


# Pairs (T * topk) that route_by_rank routes (every decode step and prefills up to 512 tokens of top-8):
# pairs**2 comparisons shared by the SMs, in one launch. Above that, route_by_chunks: two launches of work
# linear in the pairs (chunks of ROUTE_CHUNK pairs, each ranked within itself by the same kernel, then
# placed). Both replaced torch's sort (five kernels and about 45 µs on an H100 at 8192 pairs; about 90 µs
# of host time on the H200 machine) and, up to 4096 pairs, one Triton program that sorted the keys in its
# registers: 35.7 µs at 2048 pairs (DeepSeek-R1 TP8 at 256 tokens, H100, the layer's profile), 6 % of that
# layer call. route_by_sort is left for CPU tensors without the interpreter (and as the tests' reference).
# Measured (benchmarks/route_bench.py, E = 256, one H100, kernel mode, µs, rank / chunks / sort): 2048 pairs
# 8.5 / 11.5 / 57.8, 4096 12.0 / 12.8 / 63.8, 8192 20.0 / 13.4 / 107.6, 32768 187.8 / 24.8 / 96.9.
ROUTE_BY_RANK_PAIRS = 4096
ROUTE_CHUNK = 2048  # pairs per chunk of route_by_chunks (the rank within a chunk is CHUNK**2 comparisons)
ROUTE_MAX_BINS = 4096  # offsets per chunk (experts + 2, to a power of 2) route_by_chunks holds in registers


def _route_way(pairs: int, num_experts: int, device: torch.device) -> str:
    """How route() routes: "rank" (one launch, up to ROUTE_BY_RANK_PAIRS pairs while the keys (expert,
    pair) fit in int32), "chunks" (two, while a chunk's offsets fit a program's registers) or "sort"
    (torch's; also for no pairs and for CPU tensors without the interpreter)."""
    if not pairs or _torch_steps(device):
        return "sort"
    if pairs <= ROUTE_BY_RANK_PAIRS and (num_experts + 1) * pairs < 2**31:
        return "rank"
    return "chunks" if _next_power_of_2(num_experts + 2) <= ROUTE_MAX_BINS else "sort"


def route(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert_offsets (E+1,) int32, pair_rows (T*topk,) int32): grouped row pair_rows[p] holds pair p
    (pair p = token * topk + k); pair_rows is a permutation of the rows.

    A stable sort keeps the pairs of one expert in (token, k) order. Ids out of range sort as expert E,
    after every expert: offs[E] counts only the pairs of real experts, and the rows past it belong to none.
    """
    way = _route_way(topk_ids.numel(), num_experts, topk_ids.device)
    return {"rank": route_by_rank, "chunks": route_by_chunks, "sort": route_by_sort}[way](topk_ids, num_experts)


def _route_in(way: str, topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """route() by the launches of `way` (_route_launches), on tensors of its own."""
    flat = topk_ids.reshape(-1)
    launches, chunk_offsets_shape = _route_launches(way, flat.shape[0], num_experts, flat.dtype, flat.device)
    empty = functools.partial(torch.empty, dtype=torch.int32, device=flat.device)
    named = dict(ids=flat, offsets=empty(num_experts + 1), pair_rows=empty(flat.shape[0]))
    if chunk_offsets_shape:
        named["chunk_offsets"] = empty(chunk_offsets_shape)
    for launch, names in launches:
        _run(launch, *(named[n] for n in names))
    return named["offsets"], named["pair_rows"]


def route_by_rank(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """route() in one Triton launch (route_kernel): each pair's row is the number of pair keys (expert,
    pair) below its own, each expert's offset the number of keys of the experts before it."""
    return _route_in("rank", topk_ids, num_experts)


def route_by_chunks(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """route() in two Triton launches: route_kernel on each chunk of ROUTE_CHUNK pairs (each pair's place
    in its chunk, the chunk's offsets), then route_place_kernel (each pair moved by the rows of the buckets
    below its own in all chunks and of its own bucket in the chunks before)."""
    return _route_in("chunks", topk_ids, num_experts)


def route_by_sort(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """route() with torch: a stable sort of the expert ids, its inverse by one scatter, and a binary search
    of each expert's start."""
    flat = topk_ids.reshape(-1)
    bucket = torch.where((flat >= 0) & (flat < num_experts), flat, num_experts)
    sorted_bucket, order = torch.sort(bucket, stable=True)
    # offs[e] = pairs whose bucket is below e: a binary search in the sorted buckets, no count on the host
    thresholds = torch.arange(num_experts + 1, dtype=bucket.dtype, device=bucket.device)
    offsets = torch.searchsorted(sorted_bucket, thresholds, out_int32=True)
    rows = torch.arange(flat.shape[0], dtype=torch.int32, device=flat.device)
    return offsets, torch.empty_like(rows).scatter_(0, order, rows)  # pair_rows[order[r]] = r


def _interpreted(device: torch.device) -> bool:
    return device.type == "cpu"


def _next_power_of_2(n: int) -> int:
    """(triton.next_power_of_2 without importing triton here: TRITON_INTERPRET is read at its import)"""
    return 1 << max(n - 1, 0).bit_length()


def _fp8_target(q: torch.Tensor) -> torch.Tensor:
    """What the kernels store into: the interpreter gets a uint8 view and the bits computed in software."""
    return q.view(torch.uint8) if _interpreted(q.device) else q


def _fp8_target_dtype(device: torch.device) -> torch.dtype:
    return torch.uint8 if _interpreted(device) else FP8


def _units_per_program(rows: int, groups: int, device: torch.device) -> int:
    if _interpreted(device):
        return _next_power_of_2(max(1, min(rows, CPU_ROWS) * groups))
    return GPU_UNITS


# --- The layer's Triton kernels as planned launches (es_dual.triton_ref.direct), by sizes -----------------
# Each takes contiguous tensors in the kernel's pointer order; its strides follow from the sizes.

def _route_launches(way, pairs, num_experts, ids_dtype, device) -> tuple[tuple, tuple[int, int] | None]:
    """The planned launches of route()'s `way` ("rank" or "chunks"), each (launch, the names of its
    tensors among ids, offsets, pair_rows, chunk_offsets), and the shape of chunk_offsets (None: none)."""
    from ..triton_ref.direct import direct_launch  # imported on first use: TRITON_INTERPRET is read then
    from .kernels import route_kernel, route_place_kernel

    # route_kernel on chunks of chunk_pairs pairs, offsets_count offsets each (one chunk: the rows)
    chunk_pairs, bins = (max(pairs, 1), 0) if way == "rank" else (ROUTE_CHUNK, _next_power_of_2(num_experts + 2))
    chunks = max(cdiv(pairs, chunk_pairs), 1)
    offsets_count = num_experts + 1 if way == "rank" else num_experts + 2
    # GPU: 32 queries per program against 256 keys per step (a 32 x 256 comparison tile for 4 warps), so
    # the pairs of a decode step spread over many SMs; the interpreter pays per program and per step,
    # so it takes up to 512 queries and keys at once
    queries, keys = ((min(_next_power_of_2(max(chunk_pairs, offsets_count)), 512),) * 2 if _interpreted(device)
                     else (32, 256))
    rank = direct_launch(route_kernel, (cdiv(chunk_pairs, queries) + cdiv(offsets_count, queries), chunks),
                         (ids_dtype, torch.int32, torch.int32), device, dict(num_warps=4), pairs=pairs,
                         num_experts=num_experts, chunk_pairs=chunk_pairs, offsets_stride=bins,
                         offsets_count=offsets_count, QUERIES=queries, CHUNK=keys)
    if way == "rank":
        return ((rank, ("ids", "offsets", "pair_rows")),), None
    # each program sums the offsets of every chunk (8 chunks' rows per load) and places 1024 pairs
    lanes = 1024
    place = direct_launch(route_place_kernel, (chunks, max(cdiv(min(pairs, ROUTE_CHUNK), lanes), 1)),
                          (ids_dtype, torch.int32, torch.int32, torch.int32), device, dict(num_warps=8),
                          pairs=pairs, num_experts=num_experts, chunks=chunks, chunk_pairs=ROUTE_CHUNK,
                          BINS=bins, CHUNK=lanes, CHUNKS_STEP=8)
    return ((rank, ("ids", "chunk_offsets", "pair_rows")),
            (place, ("ids", "chunk_offsets", "offsets", "pair_rows"))), (chunks, bins)


def _quantize_scatter_step(tokens, hidden_size, topk, num_experts, device, gather: bool = False):
    """quantize_scatter_kernel's launch, or (gather) quantize_gather_kernel's."""
    from ..triton_ref.direct import direct_launch
    from .kernels import quantize_gather_kernel, quantize_scatter_kernel

    # units (token, scale group): a token's row is read and quantized once, however many pairs it has
    groups = cdiv(hidden_size, SCALE_BLOCK)
    per_program = _units_per_program(tokens, groups, device)
    dtypes = (torch.bfloat16, torch.int32, torch.int32, _fp8_target_dtype(device), torch.float32)
    kernel, dtypes = (quantize_gather_kernel, dtypes + (torch.int32,)) if gather else (quantize_scatter_kernel, dtypes)
    return direct_launch(kernel, (cdiv(tokens * groups, per_program),), dtypes, device,
                         tokens=tokens, hidden_size=hidden_size, topk=topk, num_experts=num_experts,
                         stride_hidden=hidden_size, stride_q=hidden_size, stride_scale=groups,
                         GROUP=SCALE_BLOCK, BLOCK_UNITS=per_program, INTERPRETER=_interpreted(device))


def _silu_mul_quantize_step(rows, intermediate, num_experts, device):
    from ..triton_ref.direct import direct_launch
    from .kernels import silu_mul_quantize_kernel

    groups = cdiv(intermediate, SCALE_BLOCK)
    per_program = _units_per_program(rows, groups, device)
    dtypes = (torch.bfloat16, torch.int32, _fp8_target_dtype(device), torch.float32)
    return direct_launch(silu_mul_quantize_kernel, (cdiv(rows * groups, per_program),), dtypes, device,
                         rows=rows, intermediate=intermediate, num_experts=num_experts,
                         stride_gate_up=2 * intermediate, stride_q=intermediate, stride_scale=groups,
                         GROUP=SCALE_BLOCK, BLOCK_UNITS=per_program, INTERPRETER=_interpreted(device))


def _unpermute_sum_step(tokens, hidden_size, topk, num_experts, ids_dtype, device):
    from ..triton_ref.direct import direct_launch
    from .kernels import unpermute_sum_kernel

    if _interpreted(device):
        block_t, block_h = _next_power_of_2(min(tokens, CPU_ROWS)), _next_power_of_2(hidden_size)
    else:
        block_t, block_h = GPU_BLOCK_T, GPU_BLOCK_H
    dtypes = (torch.bfloat16, torch.int32, ids_dtype, torch.float32, torch.bfloat16)
    return direct_launch(unpermute_sum_kernel, (cdiv(tokens, block_t), cdiv(hidden_size, block_h)), dtypes, device,
                         tokens=tokens, hidden_size=hidden_size, topk=topk, num_experts=num_experts,
                         stride_down=hidden_size, stride_out=hidden_size,
                         BLOCK_T=block_t, BLOCK_H=block_h, INTERPRETER=_interpreted(device))


def _run(step, *tensors) -> None:
    step(tuple(t.data_ptr() for t in tensors), lambda: tensors)


# --- The same steps in torch, for CPU tensors when Triton cannot run there (no TRITON_INTERPRET=1) --------
# Each has a kernel's call form, step(ptrs, tensors), and reads only the tensors: the same results (the
# quantizer is es_dual.quant's, which the kernels match bit for bit; the weighted sum runs over k in order in
# float32, as the kernel's).

def _valid_rows(offsets: torch.Tensor) -> int:
    return int(offsets[-1])  # a host read: these steps serve CPU tensors only


def _quantize_scatter_torch(ptrs, tensors, topk: int) -> None:
    hidden, pair_rows, offsets, a_bits, a_scale = tensors()
    q, scale = quantize_fp8_per_token_group(hidden)
    rows = pair_rows.long()
    routed = rows < _valid_rows(offsets)  # the pairs of real experts
    token = torch.arange(rows.numel()) // topk
    a_bits[rows[routed]] = q.view(a_bits.dtype)[token[routed]]
    a_scale[rows[routed]] = scale[token[routed]]


def _silu_mul_quantize_torch(ptrs, tensors) -> None:
    gate_up, offsets, y_bits, y_scale = tensors()
    rows = _valid_rows(offsets)
    gate, up = gate_up[:rows].float().chunk(2, dim=-1)
    q, scale = quantize_fp8_per_token_group(torch.nn.functional.silu(gate) * up)
    y_bits[:rows] = q.view(y_bits.dtype)
    y_scale[:rows] = scale


def _unpermute_sum_torch(ptrs, tensors, num_experts: int) -> None:
    down, pair_rows, topk_ids, topk_weights, out = tensors()
    tokens, topk = topk_ids.shape
    acc = torch.zeros(tokens, down.shape[1], dtype=torch.float32)
    for k in range(topk):
        valid = (topk_ids[:, k] >= 0) & (topk_ids[:, k] < num_experts)  # a pair out of range adds nothing
        rows = torch.where(valid, pair_rows.view(tokens, topk)[:, k].long(), 0)
        weight = torch.where(valid, topk_weights[:, k], 0.0)
        acc += weight[:, None] * torch.where(valid[:, None], down[rows].float(), 0.0)
    out.copy_(acc.to(torch.bfloat16))


def _torch_steps(device: torch.device) -> bool:
    """Whether the layer's own steps run in torch: CPU tensors that Triton cannot run (no interpreter)."""
    return device.type == "cpu" and bool(BACKENDS["triton"].device_reasons(device))


def quantize_scatter(hidden, pair_rows, expert_offsets, topk):
    """(a, a_scale): the hidden rows in grouped order, quantized per token and 128 columns, each token once:
    row pair_rows[p] holds token p // topk. Rows from expert_offsets[-1] on are not written."""
    rows, (tokens, hidden_size) = pair_rows.shape[0], hidden.shape
    a = torch.empty(rows, hidden_size, dtype=FP8, device=hidden.device)
    a_scale = torch.empty(rows, cdiv(hidden_size, SCALE_BLOCK), dtype=torch.float32, device=hidden.device)
    if a_scale.numel():
        step = _quantize_scatter_step(tokens, hidden_size, topk, expert_offsets.shape[0] - 1, hidden.device)
        _run(step, hidden, pair_rows, expert_offsets, _fp8_target(a), a_scale)
    return a, a_scale


def silu_mul_quantize(gate_up, expert_offsets):
    """(y, y_scale): SiLU(gate_up[:, :I]) * gate_up[:, I:] in float32, quantized per token and 128 columns.
    Rows from expert_offsets[-1] on are not written."""
    rows, intermediate = gate_up.shape[0], gate_up.shape[1] // 2
    y = torch.empty(rows, intermediate, dtype=FP8, device=gate_up.device)
    y_scale = torch.empty(rows, cdiv(intermediate, SCALE_BLOCK), dtype=torch.float32, device=gate_up.device)
    if y_scale.numel():
        step = _silu_mul_quantize_step(rows, intermediate, expert_offsets.shape[0] - 1, gate_up.device)
        _run(step, gate_up, expert_offsets, _fp8_target(y), y_scale)
    return y, y_scale


def unpermute_sum(down, pair_rows, topk_weights, topk_ids, num_experts):
    """out[t] = sum over k, in order, of topk_weights[t, k] * down[pair_rows[t * topk + k]] (float32, then
    bf16), skipping the pairs whose expert id is out of range."""
    tokens, hidden_size = topk_ids.shape[0], down.shape[1]
    out = torch.empty(tokens, hidden_size, dtype=torch.bfloat16, device=down.device)
    if tokens:
        step = _unpermute_sum_step(tokens, hidden_size, topk_ids.shape[1], num_experts, topk_ids.dtype, down.device)
        _run(step, down, pair_rows, topk_ids, topk_weights, out)
    return out


def fused_moe_fp8(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids, *, backend="auto", validate=None,
                  first_expert=0):
    """The expert block of an MoE layer with FP8 blockwise-scaled weights.

    For every token t and every k < topk, with e = topk_ids[t, k]::

        x        = dequant(quantize_fp8_per_token_group(hidden[t]))
        gate, up = (x @ dequant(w13[e]).T).to(bf16).split(I)
        y        = dequant(quantize_fp8_per_token_group(silu(gate) * up))      # float32 before quantizing
        out[t]  += topk_weights[t, k] * (y @ dequant(w2[e]).T).to(bf16)         # float32 sum over k, in order
    out is returned as bf16.

    Args:
        hidden: (T, H) bfloat16.
        w13: (E, 2I, H) float8_e4m3fn, the gate rows then the up rows of each expert.
        w13_scale: (E, ceil(2I/128), ceil(H/128)) float32, one scale per 128x128 block of w13[e] as one
            (2I, H) matrix (when I is not a multiple of 128 a block spans gate and up rows).
        w2: (E, H, I) float8_e4m3fn; w2_scale: (E, ceil(H/128), ceil(I/128)) float32.
        topk_weights: (T, topk) float32; topk_ids: (T, topk) int32 or int64, on the same device.
            H and I are positive multiples of 16; every tensor is contiguous.
        backend: the grouped GEMM backend, as for es_dual.grouped_gemm_fp8 ("auto", "triton", "cutlass",
            "cutlass_single", "reference"); the layer's own steps are Triton kernels, and on CPU tensors
            the Triton interpreter with TRITON_INTERPRET=1, else the same steps in torch. "auto" (with
            ES_DUAL_BACKEND unset) takes the decode path at T * topk <= DECODE_MAX_PAIRS pairs when they
            are at most E / 2 or their expert weights together at most DECODE_REREAD_BYTES: Triton kernels
            that split the GEMMs along K instead of grouped GEMMs (module docstring).
        validate: also check contents on the host: ids in [0, E) and distinct within each token, weight
            scales finite and >= 0 (with first_expert, ids outside the range are allowed). It copies to
            the host and synchronizes, so it is off by default; None reads ES_DUAL_VALIDATE ("1" turns it on).
        first_expert: the expert id of w13[0] and w2[0]: the weights hold experts first_expert ..
            first_expert + E - 1 (one rank's range under expert parallelism, es_dual.moe.ep) and topk_ids
            name experts of the whole model; pairs routed outside the range contribute nothing.

    Contents are not checked otherwise, and nothing then needs the host:
        - a pair (t, k) whose id lies outside [0, E) contributes nothing (a token whose ids all lie
          outside gets zeros); no memory outside the tensors is touched;
        - a token that names one expert twice (invalid input) is computed as two pairs: both rows go
          through the expert and out[t] gets both, each with its own weight.

    Returns:
        (T, H) bfloat16.

    Raises:
        TypeError / ValueError naming the argument, the expected and the received value; RuntimeError
        when the backend cannot run the GEMMs or Triton cannot run on the tensors' device.
    """
    shape = check_moe_inputs(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids)
    if type(first_expert) is not int or first_expert < 0:
        raise ValueError(f"first_expert: expected an int >= 0 (the id of the weights' first expert), got {first_expert!r}")
    plan = _layer_plan(shape, topk_ids.dtype, backend, getenv("ES_DUAL_BACKEND") if backend == "auto" else None)
    if validate or (validate is None and getenv("ES_DUAL_VALIDATE") == "1"):
        check_moe_contents(w13_scale, w2_scale, topk_ids, None if first_expert else shape.num_experts)
    if first_expert:  # ids of other ranks' experts fall outside [0, E): they contribute nothing
        topk_ids = topk_ids - first_expert
    return plan(hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids)


_PLANS: dict = {}
_MAX_PLANS = 1024  # distinct layer shapes kept (one per batch size and layer shape in serving)
# Pairs (T * topk) up to which backend "auto" takes the decode path (_DecodePlan): each pair's expert
# weights streamed by programs of their own, split along K, instead of two grouped GEMMs whose tiles do not
# cover the SMs at these sizes. Every pair reads its expert's weights itself, so once pairs share experts
# the grouped GEMMs, which read each expert once, win: the path also needs pairs <= E / 2, where uniform
# routing hits E (1 - (1 - 1/E)^pairs) experts and so reads at most ~1.27x the weights the grouped GEMMs
# read (DeepSeek-R1 TP8, E = 256, at 64 pairs: 1.13x). Measured at 64 pairs (8 tokens, H200, kernel mode):
# DeepSeek-R1 TP8 107.6 µs against 125.7 for the grouped pipeline, Qwen3-235B TP4 (E = 128) 91.5 against 90.4.
# Small experts take it even when pairs share them: when every pair's expert weights together are at most
# DECODE_REREAD_BYTES (re-read from the L2, which holds 50 MB on the H200), reading them again costs a few µs
# of bandwidth, less than what the grouped pipeline's five more launches cost on the GPU (the 18 µs above
# bought 13 % more bytes read) and on the host (about 35 µs per call more on the H200 machine).
DECODE_MAX_PAIRS = 64
DECODE_REREAD_BYTES = 16 << 20
# The grouped pipeline's first GEMM reading each token's one quantized row by index (_LayerPlan's gather),
# where its backend can: the quantizer writes T rows instead of T * topk (DeepSeek-R1 TP8 at 4096 tokens:
# 29 MB instead of 235 MB), and the GEMM's T * topk row reads mostly hit the L2, which holds the T rows.
# Measured on an H100 (2026-12-08, benchmarks/decode_sweep.py --gather, kernel mode) at 4096 tokens: 1572.5
# against 1249.2 µs (DeepSeek-R1 TP8), 1028.8 against 720.2 (Qwen3-235B TP4): the gathered gate-up GEMM took
# 847 µs against 446, its producer warp issuing 1024 16-byte copies per K block (docs/perf-notes.md), so off.
GATHER_FIRST_GEMM = False


def _layer_plan(shape: MoeShape, ids_dtype: torch.dtype, backend: str, env_backend):
    """The plan of a layer call of this shape (its arguments refused here raise on every call)."""
    key = (shape, ids_dtype, backend, env_backend)
    plan = _PLANS.get(key)
    if plan is None:
        if backend not in BACKEND_NAMES:
            raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKEND_NAMES))}, got {backend!r}")
        reasons = BACKENDS["triton"].device_reasons(shape.device)
        if reasons and not _torch_steps(shape.device):
            raise RuntimeError("fused_moe_fp8 runs Triton kernels: " + "; ".join(reasons))
        pairs = shape.tokens * shape.topk
        expert_bytes = 3 * shape.intermediate * shape.hidden_size  # w13 (2I, H) and w2 (H, I), FP8
        decode = (backend == "auto" and env_backend is None and not reasons and 0 < pairs <= DECODE_MAX_PAIRS
                  and (pairs <= shape.num_experts // 2 or pairs * expert_bytes <= DECODE_REREAD_BYTES))
        plan = _DecodePlan(shape, ids_dtype) if decode else _LayerPlan(shape, ids_dtype, backend)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _buffer_layout(regions: dict) -> tuple[dict, int]:
    """regions {name: (dtype, shape)} placed one after another in one byte buffer, each on a 256-byte
    boundary (TMA needs 16): ({name: (offset, bytes, dtype, shape)}, total bytes)."""
    placed, offset = {}, 0
    for name, (dtype, dims) in regions.items():
        nbytes = dtype.itemsize * math.prod(dims)
        placed[name] = (offset, nbytes, dtype, dims)
        offset += -(-nbytes // 256) * 256
    return placed, offset


class _Intermediates:
    """One call's buffer of intermediates, laid out by _buffer_layout: each region's data pointer, and the
    regions as tensors, made only if a launch asks for them (the first of a kind, the CPU's interpreter, a
    backend that reads tensors). "<name>_bits" of an FP8 region is what the quantizing kernels store into
    (_fp8_target); `replaced` holds regions a call made elsewhere (torch's sort, see route)."""

    def __init__(self, placed: dict, nbytes: int, device):
        self.buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.placed, self.replaced, self.views = placed, {}, {}
        base = self.buf.data_ptr()
        self.ptrs = tuple(base + offset for offset, _, _, _ in placed.values())

    def tensors(self, *items):
        """A function returning items, each a tensor or a region's name, as tensors."""
        def make():
            if not self.views:
                views = {name: self.buf[offset:offset + nbytes].view(dtype).view(dims)
                         for name, (offset, nbytes, dtype, dims) in self.placed.items()}
                views.update({f"{name}_bits": _fp8_target(v) for name, v in views.items() if v.dtype == FP8})
                self.views.update(views, **self.replaced)
            return tuple(self.views[i] if isinstance(i, str) else i for i in items)
        return make


class DecodeConfig(NamedTuple):
    """The decode path's launch shapes (decode_kernels.py). gate_up: weight rows per program (divides 128),
    scale groups of K per load, warps, pipeline stages, and about how many programs per SM the K split aims
    at (one wave); down: weight rows per program (divides 128), columns of I per load, warps, stages;
    overlap_max_pairs: up to this many pairs, SiLU and down are launched as programmatic dependents
    (decode_kernels.py), where the GPU has them (0: never); gate_up_tensor_cores: gate_up's products on
    the tensor cores (decode_gate_up_mma_kernel: one scale group per loop step, gate_up_groups unused; off:
    slower, see below); down_tensor_cores_from_pairs: from this many pairs on, down's products on the
    tensor cores (decode_down_mma_kernel, one scale group per loop step, down_i_chunk unused) with
    down_mma_warps and down_mma_stages (0: always; more than DECODE_MAX_PAIRS: never)."""
    gate_up_block_n: int = 64
    gate_up_groups: int = 2
    gate_up_warps: int = 8
    gate_up_stages: int = 1
    programs_per_sm: int = 16
    down_block_n: int = 16
    down_i_chunk: int = 128
    down_warps: int = 4
    down_stages: int = 1
    overlap_max_pairs: int = 8
    gate_up_tensor_cores: bool = False
    down_tensor_cores_from_pairs: int = 9
    down_mma_warps: int = 1
    down_mma_stages: int = 3
    # the SiLU step: units (pair, scale group of I) per program and splits' partial sums per load; its
    # (units, splits, 128) tile stays small with 2 units and up to 16 splits, and a few tokens' units still
    # fill many SMs
    silu_units: int = 2
    silu_splits_per_load: int = 16


# The defaults: the best in sum over DeepSeek-R1 TP8 and Qwen3-235B TP4 at 1 and 8 tokens of
# benchmarks/decode_sweep.py on one H200 (docs/perf-notes.md): gate_up 16.1 / 71.8 and 15.2 / 60.2 µs,
# down 13.5 / 45.8 and 13.4 / 38.9 µs, each within 4 % of the best for its size but one (gate_up at 8
# tokens of DeepSeek: 68.8 with 4 programs per SM, which is 10 % slower at 1 token). The overlap, the whole
# path in kernel mode (benchmarks/decode_sweep.py --layer, same card): at 1 token (8 pairs) DeepSeek 26.0 µs
# against 29.2 without, Qwen 24.8 against 26.2; at 8 tokens (64 pairs) 110.5 against 107.9 and 94.6 against
# 92.1, so it stops at 8 pairs (no sizes in between were measured). The tensor-core kernels (same command,
# a later run, µs at 1 / 8 tokens, DeepSeek then Qwen): gate_up on them (128 rows, 4 warps, 3-4 stages,
# 2 programs per SM) 27.4-27.9 / 124.7-125.9 and 27.0-27.4 / 92.2-92.7 against 25.7-26.0 / 107.9-108.1
# and 24.4-24.5 / 91.7-91.8: off. down on them with one warp on 16 rows: at 8 tokens 100.6-101.0 (2-3
# stages) against 107.9 and 86.2-90.3 against 91.7 (4-8 stages: slower again), at one token 36.9-41.2
# against 25.7 (31.7 without the overlap, against 28.9): from 9 pairs, 3 stages. gate_up prefetching its
# pairs' down weights into the L2 (prefetch.global.L2, its own weight loads evict-first; 2026-12-02, same
# command) was slower: 29.0 against 25.9 µs at one token (Qwen 27.7 against 24.7), level at eight; removed.


DECODE_CONFIG = DecodeConfig()


class _DecodePlan:
    """The layer at decode sizes (decode_kernels.py): three Triton kernels on the pairs as they come (no
    routing, no grouped GEMM), the gate_up GEMM split along K into `splits` parts (default: enough
    programs for config.programs_per_sm per SM). The intermediates live in one buffer."""

    def __init__(self, shape: MoeShape, ids_dtype: torch.dtype, splits: int | None = None,
                 config: DecodeConfig = DECODE_CONFIG):
        from ..triton_ref.direct import direct_launch  # imported on first use: TRITON_INTERPRET is read then
        from ..device import device_capability
        from ..triton_ref.launch import device_facts
        from .decode_kernels import (
            decode_down_kernel, decode_down_mma_kernel, decode_gate_up_kernel, decode_gate_up_mma_kernel,
            decode_silu_mul_quantize_kernel,
        )

        tokens, hidden_size, intermediate, num_experts, topk, device = shape
        self.shape = shape
        pairs = tokens * topk
        _, sm_count = device_facts(device)
        groups_h, groups_i = cdiv(hidden_size, SCALE_BLOCK), cdiv(intermediate, SCALE_BLOCK)
        tiles_gate_up = cdiv(2 * intermediate, config.gate_up_block_n)
        if splits is None:
            # as many as fit in one wave of config.programs_per_sm programs per SM (rounded down: a second,
            # partial wave would cost as much as the first)
            splits = config.programs_per_sm * sm_count // max(pairs * tiles_gate_up, 1)
        split_groups = cdiv(groups_h, min(max(splits, 1), groups_h))
        self.splits = cdiv(groups_h, split_groups)
        self.regions, self.nbytes = _buffer_layout({
            "partial": (torch.float32, (self.splits, pairs, 2 * intermediate)),
            "y": (FP8, (pairs, intermediate)), "y_scale": (torch.float32, (pairs, groups_i)),
        })
        interpreted = _interpreted(device)
        # programmatic dependent launch: Hopper on (griddepcontrol), not in the interpreter
        overlap = pairs <= config.overlap_max_pairs and not interpreted and device_capability(device) >= (9, 0)
        dependent = dict(launch_pdl=True) if overlap else {}
        # the CUDA-core kernel loads KG scale groups at once; the tensor-core one one group per loop step
        gate_up_kernel, per_load = ((decode_gate_up_mma_kernel, {}) if config.gate_up_tensor_cores else
                                    (decode_gate_up_kernel,
                                     dict(KG=min(config.gate_up_groups, _next_power_of_2(split_groups)))))
        self.gate_up = direct_launch(
            gate_up_kernel, (pairs, tiles_gate_up, self.splits),
            (torch.bfloat16, ids_dtype, FP8, torch.float32, torch.float32), device,
            dict(num_warps=config.gate_up_warps, num_stages=config.gate_up_stages),
            pairs=pairs, hidden_size=hidden_size, n=2 * intermediate, topk=topk, num_experts=num_experts,
            stride_hidden=hidden_size, stride_we=2 * intermediate * hidden_size, stride_wn=hidden_size,
            stride_wse=cdiv(2 * intermediate, SCALE_BLOCK) * groups_h, stride_wsn=groups_h,
            stride_split=pairs * 2 * intermediate, BLOCK_N=config.gate_up_block_n, GROUP=SCALE_BLOCK,
            **per_load, SPLIT_GROUPS=split_groups, OVERLAP=overlap, INTERPRETER=interpreted)
        # few units per program, each with all its splits in one load where they fit
        per_program = _units_per_program(pairs, groups_i, device) if interpreted else config.silu_units
        self.silu = direct_launch(
            decode_silu_mul_quantize_kernel, (cdiv(pairs * groups_i, per_program),),
            (torch.float32, ids_dtype, _fp8_target_dtype(device), torch.float32), device, dependent,
            pairs=pairs, intermediate=intermediate, num_experts=num_experts, splits=self.splits,
            stride_split=pairs * 2 * intermediate, stride_q=intermediate, stride_scale=groups_i,
            GROUP=SCALE_BLOCK, BLOCK_UNITS=per_program,
            SPLITS_BLOCK=min(_next_power_of_2(self.splits), config.silu_splits_per_load), OVERLAP=overlap,
            INTERPRETER=interpreted)
        # the CUDA-core kernel loads I_CHUNK columns of every k at once; the tensor-core one a group per step
        down_mma = pairs >= config.down_tensor_cores_from_pairs
        down_kernel, down_per_load, down_launch = (
            (decode_down_mma_kernel, {}, dict(num_warps=config.down_mma_warps, num_stages=config.down_mma_stages))
            if down_mma else
            (decode_down_kernel, dict(I_CHUNK=min(config.down_i_chunk, _next_power_of_2(intermediate))),
             dict(num_warps=config.down_warps, num_stages=config.down_stages)))
        self.down = direct_launch(
            down_kernel, (tokens, cdiv(hidden_size, config.down_block_n)),
            (FP8, torch.float32, ids_dtype, torch.float32, FP8, torch.float32, torch.bfloat16), device,
            dict(down_launch, **dependent),
            hidden_size=hidden_size, intermediate=intermediate, topk=topk, num_experts=num_experts,
            stride_y=intermediate, stride_ys=groups_i, stride_we=hidden_size * intermediate, stride_wn=intermediate,
            stride_wse=cdiv(hidden_size, SCALE_BLOCK) * groups_i, stride_wsn=groups_i, stride_out=hidden_size,
            BLOCK_N=config.down_block_n, GROUP=SCALE_BLOCK, TOPK_BLOCK=_next_power_of_2(topk), **down_per_load,
            OVERLAP=overlap, INTERPRETER=interpreted)

    def __call__(self, hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids):
        tokens, hidden_size = self.shape.tokens, self.shape.hidden_size
        out = torch.empty(tokens, hidden_size, dtype=torch.bfloat16, device=hidden.device)
        if not tokens:
            return out
        inter = _Intermediates(self.regions, self.nbytes, hidden.device)
        for launch, ptrs, tensors in self.launches(inter, out, hidden, w13, w13_scale, w2, w2_scale, topk_weights,
                                                   topk_ids):
            launch(ptrs, tensors)
        return out

    def launches(self, inter, out, hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids) -> tuple:
        """The call's three launches in order, each (planned launch, data pointers, its tensors' maker), on
        the intermediates `inter` (benchmarks/decode_sweep.py times them one by one)."""
        partial, y, y_scale = inter.ptrs
        tensors = inter.tensors
        ids, weights, h = topk_ids.data_ptr(), topk_weights.data_ptr(), hidden.data_ptr()
        return ((self.gate_up, (h, ids, w13.data_ptr(), w13_scale.data_ptr(), partial),
                 tensors(hidden, topk_ids, w13, w13_scale, "partial")),
                (self.silu, (partial, ids, y, y_scale), tensors("partial", topk_ids, "y_bits", "y_scale")),
                (self.down, (y, y_scale, ids, weights, w2.data_ptr(), w2_scale.data_ptr(), out.data_ptr()),
                 tensors("y", "y_scale", topk_ids, topk_weights, w2, w2_scale, out)))


def _plan_gemm(problem: Problem, cutlass_mode: str | None, backend: str):
    """The launch of one of the layer's GEMMs (dispatch.launch_for), in `cutlass_mode` where the backend it
    chooses is the CUTLASS one and a mode is named (_LayerPlan's tuning hook)."""
    if cutlass_mode is not None and select_backend(problem, backend).name == "cutlass":
        from ..cutlass.launch import plan_cutlass

        return plan_cutlass(problem, torch.int32, cutlass_mode)
    return launch_for(problem, torch.int32, backend)


class _LayerPlan:
    """Everything a layer call of one shape needs but its tensors, worked out once: the intermediates'
    places in one buffer, each step's planned launch (the layer's Triton kernels, the two grouped GEMMs as
    the dispatcher plans them for `backend`). A call then allocates the buffer and `out` and launches on
    data pointers: the layer builds every GEMM input itself, within the tensor contract by construction
    (sizes checked by check_moe_inputs, offsets and scales made by its own kernels), so the GEMM op's
    per-call checks would only repeat what is known.

    gather (default GATHER_FIRST_GEMM): where the first GEMM's backend gathers rows (all but cutlass_single;
    the CUTLASS backend on its native kernels), each token's row is quantized once into a (tokens, H)
    tensor and the first GEMM reads it by the row_index of each grouped row, instead of topk copies of it
    scattered in grouped order.

    cutlass_modes (a tuning hook, benchmarks/decode_sweep.py): the CUTLASS library mode of each GEMM (first,
    down; None: es_mode's choice) where that GEMM's backend is the CUTLASS one."""

    def __init__(self, shape: MoeShape, ids_dtype: torch.dtype, backend: str, gather: bool | None = None,
                 cutlass_modes: tuple[str | None, str | None] = (None, None)):
        tokens, hidden_size, intermediate, num_experts, topk, device = shape
        rows = tokens * topk
        self.shape, self.rows = shape, rows
        groups_h, groups_i = cdiv(hidden_size, SCALE_BLOCK), cdiv(intermediate, SCALE_BLOCK)
        in_torch = _torch_steps(device)
        gemm1 = Problem(rows, 2 * intermediate, hidden_size, num_experts, torch.bfloat16, device)
        plan_gemm = functools.partial(_plan_gemm, backend=backend)
        self.gemm1 = None
        if rows and not in_torch and (GATHER_FIRST_GEMM if gather is None else gather):
            try:
                self.gemm1 = plan_gemm(gemm1._replace(a_rows=tokens), cutlass_modes[0])
            except RuntimeError:  # no backend of this call gathers rows: the scattered copies
                pass
        self.gather = self.gemm1 is not None
        # a gather's row index: the quantizer's last output, the first GEMM's seventh pointer (Problem.a_rows)
        self.gathered = ("row_index",) if self.gather else ()
        a_rows = tokens if self.gather else rows
        regions = {
            "offsets": (torch.int32, (num_experts + 1,)), "pair_rows": (torch.int32, (rows,)),
            "a": (FP8, (a_rows, hidden_size)), "a_scale": (torch.float32, (a_rows, groups_h)),
            "gate_up": (torch.bfloat16, (rows, 2 * intermediate)),
            "y": (FP8, (rows, intermediate)), "y_scale": (torch.float32, (rows, groups_i)),
            "down": (torch.bfloat16, (rows, hidden_size)),
        }
        if self.gather:
            regions["row_index"] = (torch.int32, (rows,))
        # routing as route() does it, into the buffer (chunk_offsets too), or none: torch's sort, into
        # tensors of its own
        way = _route_way(rows, num_experts, device)
        self.route = ()
        if way != "sort":
            self.route, chunk_offsets_shape = _route_launches(way, rows, num_experts, ids_dtype, device)
            if chunk_offsets_shape:
                regions["chunk_offsets"] = (torch.int32, chunk_offsets_shape)
        self.regions, self.nbytes = _buffer_layout(regions)
        if rows and in_torch:
            self.quantize_scatter = functools.partial(_quantize_scatter_torch, topk=topk)
            self.silu = _silu_mul_quantize_torch
            self.unpermute = functools.partial(_unpermute_sum_torch, num_experts=num_experts)
        elif rows:
            self.quantize_scatter = _quantize_scatter_step(tokens, hidden_size, topk, num_experts, device, self.gather)
            self.silu = _silu_mul_quantize_step(rows, intermediate, num_experts, device)
            self.unpermute = _unpermute_sum_step(tokens, hidden_size, topk, num_experts, ids_dtype, device)
        if rows:
            if not self.gather:
                self.gemm1 = plan_gemm(gemm1, cutlass_modes[0])
            self.gemm2 = plan_gemm(Problem(rows, hidden_size, intermediate, num_experts, torch.bfloat16, device),
                                   cutlass_modes[1])

    def __call__(self, hidden, w13, w13_scale, w2, w2_scale, topk_weights, topk_ids):
        tokens, hidden_size, _, num_experts, topk, device = self.shape
        out = torch.empty(tokens, hidden_size, dtype=torch.bfloat16, device=device)
        if not self.rows:
            return out
        inter = _Intermediates(self.regions, self.nbytes, device)
        offs, pair_rows, a, a_scale, gate_up, y, y_scale, down = inter.ptrs[:8]
        tensors, replaced = inter.tensors, inter.replaced
        flat_ids = topk_ids.reshape(-1)
        ptr_of = dict(zip(self.regions, inter.ptrs), ids=flat_ids.data_ptr())
        for launch, names in self.route:
            launch(tuple(ptr_of[n] for n in names), tensors(*(flat_ids if n == "ids" else n for n in names)))
        if not self.route:  # torch's sort, into tensors of its own
            replaced["offsets"], replaced["pair_rows"] = route_by_sort(topk_ids, num_experts)
            offs, pair_rows = replaced["offsets"].data_ptr(), replaced["pair_rows"].data_ptr()
        h, w13p, w13s, w2p, w2s, ids, weights = (
            t.data_ptr() for t in (hidden, w13, w13_scale, w2, w2_scale, topk_ids, topk_weights))
        gathered = self.gathered
        row_index = tuple(ptr_of[name] for name in gathered)
        self.quantize_scatter((h, pair_rows, offs, a, a_scale, *row_index),
                              tensors(hidden, "pair_rows", "offsets", "a_bits", "a_scale", *gathered))
        self.gemm1((a, a_scale, w13p, w13s, offs, gate_up, *row_index),
                   tensors("a", "a_scale", w13, w13_scale, "offsets", "gate_up", *gathered))
        self.silu((gate_up, offs, y, y_scale), tensors("gate_up", "offsets", "y_bits", "y_scale"))
        self.gemm2((y, y_scale, w2p, w2s, offs, down), tensors("y", "y_scale", w2, w2_scale, "offsets", "down"))
        self.unpermute((down, pair_rows, ids, weights, out.data_ptr()),
                       tensors("down", "pair_rows", topk_ids, topk_weights, out))
        return out

"""The one place where a call's arguments are checked (DESIGN.md, decision 6).

Every backend receives a :class:`Problem` built here, so a refused call raises before any backend
touches ``out``. Messages name the argument, what was expected and what was given. Nothing here reads
tensor *contents*: that would need a device-to-host copy (see ``check_contents`` for the opt-in).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

SCALE_BLOCK = 128  # K (and N, for weights) elements per scale; fixed by the tensor contract
DIM_MULTIPLE = 16  # n and k: FP8 rows must be 16-byte aligned for TMA and vector loads
PTR_ALIGN = 16  # bytes; a, b and out start on a 16-byte boundary (TMA descriptors need it)
FP8 = torch.float8_e4m3fn
OUT_DTYPES = (torch.bfloat16, torch.float16)
OFFSET_DTYPES = (torch.int32, torch.int64)


class Problem(NamedTuple):
    """Sizes of one grouped GEMM call; everything a backend needs to choose and launch, no contents.
    (A NamedTuple: it is built on every call, and that is 3x cheaper than a frozen dataclass.)"""

    total_m: int
    n: int
    k: int
    num_experts: int
    out_dtype: torch.dtype
    device: torch.device
    max_m: int = 0  # 0: rows grouped by expert (expert_offsets); > 0: the masked layout, E x max_m rows
    # 0: a_scale K-major (contiguous, a row's scales together); > 0: MN-major, the scale of (row, group g)
    # at element g * a_scale_ld + row (strides (1, a_scale_ld): DeepGEMM's layout), contiguous layout only
    a_scale_ld: int = 0
    # 0: a and a_scale hold the total_m grouped rows; > 0: a gather (the MoE layer's first GEMM): a and
    # a_scale hold a_rows rows, and grouped row r of an expert reads row row_index[r] of both, row_index
    # being an int32 (total_m,) tensor given as a seventh data pointer (after out); contiguous layout
    a_rows: int = 0

    @property
    def mean_tokens(self) -> float:
        """Mean tokens per expert: what the host may know about the routing without a sync."""
        return self.total_m / self.num_experts


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device} with strides {tuple(t.stride())}"


def _expect_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")


def _expect_dtype(name: str, t: torch.Tensor, allowed: tuple) -> None:
    if t.dtype not in allowed:
        want = " or ".join(str(d) for d in allowed)
        raise TypeError(f"{name}: expected dtype {want}, got {t.dtype}")


def _expect_shape(name: str, t: torch.Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def _expect_contiguous(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous (row-major) tensor, got {_describe(t)}")


def _expect_aligned(name: str, t: torch.Tensor) -> None:
    if t.numel() and t.data_ptr() % PTR_ALIGN:
        raise ValueError(
            f"{name}: expected a data pointer aligned to {PTR_ALIGN} bytes, got address "
            f"{t.data_ptr():#x} (storage offset {t.storage_offset()})"
        )


def mn_major_ld(a_scale: torch.Tensor) -> int:
    """The leading dimension of an MN-major a_scale (total_m, groups): strides (1, ld) with ld >= total_m;
    0 for any other layout. A contiguous a_scale is K-major, also where its strides would fit both."""
    if a_scale.dim() != 2 or a_scale.is_contiguous():
        return 0
    total_m, _ = a_scale.shape
    row_stride, ld = a_scale.stride()
    return ld if row_stride == 1 and ld >= max(total_m, 1) else 0


def _span_bytes(t: torch.Tensor) -> int:
    """Bytes from t's first element to past its last (its extent in memory, gaps included)."""
    if t.numel() == 0:
        return 0
    return (1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))) * t.element_size()


def _overlapped(out: torch.Tensor, tensors) -> int | None:
    """Index of the first of `tensors` (all on out's device) whose memory overlaps out's, else None."""
    size = out.numel() * out.element_size()
    if size == 0:
        return None
    o0 = out.data_ptr()
    o1 = o0 + size
    for i, t in enumerate(tensors):
        t0 = t.data_ptr()
        t1 = t0 + _span_bytes(t)
        if t0 < t1 and t0 < o1 and o0 < t1:
            return i
    return None


def output_for(a, a_scale, b, b_scale, expert_offsets, out, out_dtype) -> torch.Tensor:
    """``out``, allocated when None. Checks only that the arguments are tensors (the op's schema needs
    them) and what allocating needs; the call itself checks everything else (check_inputs)."""
    for name, t in (("a", a), ("a_scale", a_scale), ("b", b), ("b_scale", b_scale), ("expert_offsets", expert_offsets)):
        _expect_tensor(name, t)
    if out is not None:
        _expect_tensor("out", out)
        return out
    if a.dim() != 2:
        raise ValueError(f"a: expected 2 dimensions (total_m, k), got shape {tuple(a.shape)}")
    if b.dim() != 3:
        raise ValueError(f"b: expected 3 dimensions (num_experts, n, k), got shape {tuple(b.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype: expected torch.bfloat16 or torch.float16, got {out_dtype}")
    return torch.empty(a.shape[0], b.shape[1], dtype=out_dtype, device=a.device)


def _conforming(a, a_scale, b, b_scale, rows, out, masked: bool = False) -> tuple[Problem, tuple] | None:
    """(the call's Problem, the six data pointers) when every rule of check_inputs (masked: of
    check_masked_inputs, `rows` being masked_m) holds, else None.

    This is the per-call fast path (host time matters: about 4 µs on the H200 machine's host): each
    tensor attribute is read once, and the overlap test works on byte ranges computed from the shapes
    just checked. It must never accept what those rules refuse; a None only sends the call through
    them, which raise with a message.
    """
    T = torch.Tensor
    if not (isinstance(a, T) and isinstance(a_scale, T) and isinstance(b, T) and isinstance(b_scale, T)
            and isinstance(rows, T) and isinstance(out, T)):
        return None
    try:
        if masked:
            experts_a, max_m, k = a.shape
        else:
            (total_m, k), max_m = a.shape, 0
        num_experts, n, k_b = b.shape
    except ValueError:  # not 2-D (masked: 3-D) / 3-D
        return None
    device = a.device
    groups_k = -(-k // SCALE_BLOCK)
    groups_n = -(-n // SCALE_BLOCK)
    if masked:
        total_m = num_experts * max_m
        shapes = ((num_experts, max_m, groups_k), (num_experts,), (num_experts, max_m, n))
    else:
        experts_a = num_experts
        shapes = ((total_m, groups_k), (num_experts + 1,), (total_m, n))
    rows_dtype = rows.dtype
    out_dtype = out.dtype
    if not (
        a.dtype == FP8 and b.dtype == FP8 and a_scale.dtype == torch.float32 and b_scale.dtype == torch.float32
        and rows_dtype in OFFSET_DTYPES and out_dtype in OUT_DTYPES
        and a_scale.device == device and b.device == device and b_scale.device == device
        and rows.device == device and out.device == device
        and k_b == k and num_experts >= 1 and experts_a == num_experts
        and k > 0 and k % DIM_MULTIPLE == 0 and n > 0 and n % DIM_MULTIPLE == 0
        and a_scale.shape == shapes[0] and b_scale.shape == (num_experts, groups_n, groups_k)
        and rows.shape == shapes[1] and out.shape == shapes[2]
        and a.is_contiguous() and b.is_contiguous() and b_scale.is_contiguous()
        and rows.is_contiguous() and out.is_contiguous()
    ):
        return None
    k_major_scales = a_scale.is_contiguous()
    a_scale_ld = 0 if k_major_scales or masked else mn_major_ld(a_scale)
    if not (k_major_scales or a_scale_ld):
        return None
    ptrs = (a.data_ptr(), a_scale.data_ptr(), b.data_ptr(), b_scale.data_ptr(), rows.data_ptr(), out.data_ptr())
    if ptrs[0] % PTR_ALIGN or ptrs[2] % PTR_ALIGN or ptrs[5] % PTR_ALIGN:
        return None
    # Tensors of the shapes above: their bytes are [ptr, ptr + size) (an MN-major a_scale's groups ld apart).
    out_end = ptrs[5] + total_m * n * 2
    a_scale_size = ((groups_k - 1) * a_scale_ld + total_m if a_scale_ld else total_m * groups_k) * 4
    sizes = (total_m * k, a_scale_size, num_experts * n * k, num_experts * groups_n * groups_k * 4,
             shapes[1][0] * (8 if rows_dtype == torch.int64 else 4))
    if out_end > ptrs[5]:
        for ptr, size in zip(ptrs, sizes):
            if size and ptr < out_end and ptrs[5] < ptr + size:
                return None
    return Problem(total_m, n, k, num_experts, out_dtype, device, max_m, a_scale_ld), ptrs


def check_call(a, a_scale, b, b_scale, rows, out, masked: bool = False) -> tuple[Problem, tuple]:
    """check_inputs (masked: check_masked_inputs, rows being masked_m) for a call with ``out``, plus the data
    pointers of (a, a_scale, b, b_scale, rows, out), read once for the checks and the launch."""
    checked = _conforming(a, a_scale, b, b_scale, rows, out, masked)
    if checked is not None:
        return checked
    check = check_masked_inputs if masked else check_inputs
    problem = check(a, a_scale, b, b_scale, rows, out)
    return problem, tuple(t.data_ptr() for t in (a, a_scale, b, b_scale, rows, out))


def _expect_types(named: dict, rows_name: str, out, out_dtype) -> tuple[torch.dtype, torch.device]:
    """Types, dtypes and devices of a call's tensors (named: a, a_scale, b, b_scale and the per-expert rows
    tensor `rows_name`; out added when given): (the output dtype, the device of a)."""
    for name, t in named.items():
        _expect_tensor(name, t)
    if out is not None:
        _expect_tensor("out", out)
        named["out"] = out
    for name, allowed in (("a", (FP8,)), ("b", (FP8,)), ("a_scale", (torch.float32,)), ("b_scale", (torch.float32,)),
                          (rows_name, OFFSET_DTYPES)):
        _expect_dtype(name, named[name], allowed)
    if out is not None:
        _expect_dtype("out", out, OUT_DTYPES)
        out_dtype = out.dtype
    elif out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype: expected torch.bfloat16 or torch.float16, got {out_dtype}")
    device = named["a"].device
    for name, t in named.items():
        if t.device != device:
            raise ValueError(f"{name}: expected a tensor on {device} (the device of a), got one on {t.device}")
    return out_dtype, device


def _expect_weights(b, b_scale, k: int, k_source: str) -> tuple[int, int]:
    """b (E, n, k) with E >= 1 and n, k positive multiples of 16, b_scale (E, n/128, k/128): (E, n)."""
    if b.dim() != 3:
        raise ValueError(f"b: expected 3 dimensions (num_experts, n, k), got shape {tuple(b.shape)}")
    num_experts, n, k_b = b.shape
    if k_b != k:
        raise ValueError(f"b: expected k = {k} ({k_source}) in shape (num_experts, n, k), got shape {tuple(b.shape)}")
    if num_experts < 1:
        raise ValueError(f"b: expected at least one expert, got shape {tuple(b.shape)}")
    for dim_name, size in (("n", n), ("k", k)):
        if size <= 0 or size % DIM_MULTIPLE:
            raise ValueError(f"b: expected {dim_name} to be a positive multiple of {DIM_MULTIPLE}, got {dim_name} = {size}")
    _expect_shape("b_scale", b_scale, (num_experts, cdiv(n, SCALE_BLOCK), cdiv(k, SCALE_BLOCK)))
    return num_experts, n


def _expect_layout(named: dict, mn_major_scales: bool = False) -> int:
    """Contiguous tensors (a_scale also MN-major where `mn_major_scales`), a, b and out 16-byte aligned, out
    disjoint from the inputs: a_scale's MN-major leading dimension, 0 when it is contiguous."""
    a_scale_ld = mn_major_ld(named["a_scale"]) if mn_major_scales else 0
    for name, t in named.items():
        if name == "a_scale" and a_scale_ld:
            continue  # MN-major: mn_major_ld checked its strides
        if name == "a_scale" and mn_major_scales and not t.is_contiguous():
            raise ValueError(f"a_scale: expected a contiguous (row-major, K-major) tensor or an MN-major one "
                             f"(strides (1, ld) with ld >= total_m), got {_describe(t)}")
        _expect_contiguous(name, t)
    for name in ("a", "b", "out"):
        if name in named:
            _expect_aligned(name, named[name])
    if "out" in named:
        inputs = [name for name in named if name != "out"]
        hit = _overlapped(named["out"], [named[name] for name in inputs])
        if hit is not None:
            raise ValueError(f"out: expected memory disjoint from the inputs, but it overlaps {inputs[hit]}")
    return a_scale_ld


def check_inputs(a, a_scale, b, b_scale, expert_offsets, out=None, out_dtype=torch.bfloat16) -> Problem:
    """Check every argument against the tensor contract of DESIGN.md and return the call's sizes.

    Raises ``TypeError`` for a wrong type or dtype and ``ValueError`` for anything else.
    When ``out`` is given, its dtype is the output dtype and ``out_dtype`` is ignored.
    """
    checked = _conforming(a, a_scale, b, b_scale, expert_offsets, out) if out is not None else None
    if checked is not None:
        return checked[0]
    named = {"a": a, "a_scale": a_scale, "b": b, "b_scale": b_scale, "expert_offsets": expert_offsets}
    out_dtype, device = _expect_types(named, "expert_offsets", out, out_dtype)
    if a.dim() != 2:
        raise ValueError(f"a: expected 2 dimensions (total_m, k), got shape {tuple(a.shape)}")
    total_m, k = a.shape
    num_experts, n = _expect_weights(b, b_scale, k, "a.shape[1]")
    _expect_shape("a_scale", a_scale, (total_m, cdiv(k, SCALE_BLOCK)))
    _expect_shape("expert_offsets", expert_offsets, (num_experts + 1,))
    if out is not None:
        _expect_shape("out", out, (total_m, n))

    a_scale_ld = _expect_layout(named, mn_major_scales=True)

    return Problem(total_m, n, k, num_experts, out_dtype, device, a_scale_ld=a_scale_ld)


def check_masked_inputs(a, a_scale, b, b_scale, masked_m, out=None, out_dtype=torch.bfloat16) -> Problem:
    """check_inputs for the masked layout: a (E, max_m, k), a_scale (E, max_m, ceil(k/128)), masked_m (E,)
    int32/int64, out (E, max_m, n); b and b_scale as in the contiguous layout. The Problem's total_m is
    E * max_m (the rows of a seen as one matrix) and its max_m is max_m."""
    checked = _conforming(a, a_scale, b, b_scale, masked_m, out, masked=True) if out is not None else None
    if checked is not None:
        return checked[0]
    named = {"a": a, "a_scale": a_scale, "b": b, "b_scale": b_scale, "masked_m": masked_m}
    out_dtype, device = _expect_types(named, "masked_m", out, out_dtype)
    if a.dim() != 3:
        raise ValueError(f"a: expected 3 dimensions (num_experts, max_m, k), got shape {tuple(a.shape)}")
    num_experts, max_m, k = a.shape
    if _expect_weights(b, b_scale, k, "a.shape[2]")[0] != num_experts:
        raise ValueError(f"b: expected num_experts = {num_experts} (a.shape[0]), got shape {tuple(b.shape)}")
    n = b.shape[1]
    _expect_shape("a_scale", a_scale, (num_experts, max_m, cdiv(k, SCALE_BLOCK)))
    _expect_shape("masked_m", masked_m, (num_experts,))
    if out is not None:
        _expect_shape("out", out, (num_experts, max_m, n))
    _expect_layout(named)
    return Problem(num_experts * max_m, n, k, num_experts, out_dtype, device, max_m)


def check_masked_contents(a_scale, b_scale, masked_m, max_m: int) -> None:
    """Opt-in host checks of the masked layout (they synchronize): 0 <= masked_m <= max_m, scales finite
    and >= 0."""
    counts = masked_m.tolist()
    bad = [e for e, m in enumerate(counts) if not 0 <= m <= max_m]
    if bad:
        raise ValueError(f"masked_m: expected counts in [0, {max_m}] (max_m), got {counts[bad[0]]} at index {bad[0]}")
    check_scales(a_scale=a_scale, b_scale=b_scale)


def check_contents(a_scale, b_scale, expert_offsets, total_m: int) -> None:
    """Opt-in checks of tensor contents (they copy to the host, so they are off by default).

    Offsets must start at 0, be non-decreasing and end at total_m; scales must be finite and >= 0.
    """
    offs = expert_offsets.tolist()
    if offs[0] != 0:
        raise ValueError(f"expert_offsets: expected offsets[0] == 0, got {offs[0]}")
    if offs[-1] != total_m:
        raise ValueError(f"expert_offsets: expected offsets[-1] == total_m == {total_m}, got {offs[-1]}")
    drops = [e for e in range(len(offs) - 1) if offs[e + 1] < offs[e]]
    if drops:
        e = drops[0]
        raise ValueError(
            f"expert_offsets: expected non-decreasing offsets, got offsets[{e}] = {offs[e]} > offsets[{e + 1}] = {offs[e + 1]}"
        )
    check_scales(a_scale=a_scale, b_scale=b_scale)


def check_scales(**scales: torch.Tensor) -> None:
    """Opt-in host check (it synchronizes): every scale finite and >= 0; the error names the first bad one."""
    for name, s in scales.items():
        bad = ~torch.isfinite(s) | (s < 0)
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0].tolist())
            raise ValueError(f"{name}: expected finite scales >= 0, got {s[index].item()} at index {index}")

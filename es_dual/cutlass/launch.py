"""Python side of the CUTLASS backend: whether the library is usable here, and one call into it.

What the backend supports (capability, n/k multiples) is data in limits.py, read by es_dual/dispatch.py.
The library itself accepts n % 8 == 0 and k % 16 == 0 (16-byte rows for TMA); what the backend
claims is limits.N_MULTIPLE / K_MULTIPLE, proven by tests/test_cutlass_gpu.py::test_tails.
"""
from __future__ import annotations

import ctypes
import functools

from . import buckets, build, generate, loader


def _sm_count(index: int) -> int:
    import torch

    from ..device import device_properties

    return device_properties(torch.device("cuda", index)).multi_processor_count


@functools.lru_cache(maxsize=1)
def _library_reasons() -> tuple[str, ...]:
    if build.exact_library() is None and build.any_library() is None:
        reasons = build.can_build()
        if reasons:
            return (f"the CUTLASS library is not built for sources {build.source_key()} and cannot be "
                    f"built here: " + "; ".join(reasons),)
        return ()  # buildable: the first call builds it
    try:
        loader.load_library(build_if_missing=False)
    except OSError as exc:
        return (f"the CUTLASS library does not load: {exc}",)
    return ()


def library_reasons() -> list[str]:
    """Why the library is unusable in this process (empty: it is loaded, or it will be built at first use)."""
    return list(_library_reasons())


def workspace_bytes(total_m: int, n: int, k: int, num_experts: int, out_dtype_code: int, mode: int,
                    sm_count: int) -> int:
    lib = loader.load_library()
    size = ctypes.c_size_t(0)
    status = lib.es_dual_workspace_bytes(total_m, n, k, num_experts, out_dtype_code, mode, sm_count,
                                         ctypes.byref(size))
    if status != loader.OK:
        raise RuntimeError(f"es_dual CUTLASS backend: {loader.last_error(lib)}")
    return size.value


@functools.lru_cache(maxsize=1024)
def _workspace_bytes(total_m: int, n: int, k: int, num_experts: int, out_dtype_code: int, mode: int,
                     sm_count: int) -> int:
    # An upper bound over every routing of total_m rows; the caller passes total_m = 0 for modes whose
    # size does not depend on it, so a call with a new row count costs no library query.
    return workspace_bytes(total_m, n, k, num_experts, out_dtype_code, mode, sm_count)


@functools.lru_cache(maxsize=None)
def _sized_by_rows(mode: str) -> bool:
    """Whether a mode's workspace depends on total_m: a native mode holds an MN-major copy of a_scale."""
    rows = dict(generate.compiled_modes(generate.tuning_requested())).get(mode)
    return rows is not None and buckets.fused_kernel(rows) is not None


@functools.lru_cache(maxsize=1)
def _torch_hooks():
    """torch (imported at the first call only), the current raw stream getter and out dtype codes."""
    import torch

    raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw_stream is None:
        def raw_stream(index: int) -> int:
            return torch.cuda.current_stream(index).cuda_stream

    out_codes = {getattr(torch, name): code for name, code in loader.OUT_DTYPE_CODES.items()}
    return torch, raw_stream, out_codes


def mode_code(mode: str) -> int:
    """The library's mode argument for a mode name, from the table the loaded library reports."""
    codes = loader.modes()
    try:
        return codes[mode]
    except KeyError:
        raise ValueError(f"mode: expected one of {', '.join(map(repr, codes))} (the modes this library "
                         f"was built with; ES_DUAL_TUNING=1 builds add the tuning tables), got {mode!r}") from None


def grouped_gemm_cutlass(a, a_scale, b, b_scale, expert_offsets, out, *, mode: str | None = None,
                         overlap: int | None = None, single: bool = False) -> None:
    """Write ``out`` with the CUTLASS SM90 kernels of one mode of the bucket table.

    mode: a mode name of the loaded library ("es" / "es_small_k": expert-specialized buckets of CUTLASS
        kernels, "native*": es_dual's own kernels, "single": one configuration; a tuning build has more,
        see buckets.TUNING_MODES). None: the expert-specialized mode for this shape (buckets.es_mode).
        ``single=True`` means mode="single".
    overlap: how the bucket kernels are enqueued (buckets.OVERLAPS); None: buckets.DEFAULT_OVERLAP.

    The arguments are validated by the caller (es_dual.problem.check_inputs): contiguous, on one CUDA
    device, shapes and dtypes of the tensor contract. Only enqueues work ordered before later work on
    the current stream of that device: no host synchronization, so the call can be captured in a CUDA
    graph.
    """
    torch, raw_stream, out_codes = _torch_hooks()
    lib = loader.load_library()
    total_m, k = a.shape
    num_experts, n, _ = b.shape
    mode = "single" if single else mode or buckets.es_mode(total_m, n, k, num_experts)
    code = mode_code(mode)
    if overlap is None:
        overlap = buckets.DEFAULT_OVERLAP
    device = a.device
    index = device.index
    sm_count = _sm_count(index)
    out_code = out_codes[out.dtype]
    nbytes = _workspace_bytes(total_m if _sized_by_rows(mode) else 0, n, k, num_experts, out_code, code, sm_count)
    # From the caching allocator on the current stream: reused only by work ordered after this call's.
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
    status = lib.es_dual_grouped_gemm(
        a.data_ptr(), a_scale.data_ptr(), b.data_ptr(), b_scale.data_ptr(),
        expert_offsets.data_ptr(), int(expert_offsets.dtype == torch.int64), out.data_ptr(),
        total_m, n, k, num_experts, out_code, code, overlap, index, sm_count,
        workspace.data_ptr(), nbytes, raw_stream(index),
    )
    if status != loader.OK:
        raise RuntimeError(f"es_dual CUTLASS backend: {loader.last_error(lib)}")

"""Python side of the CUTLASS backend: whether the library is usable here, and one call into it.

What the backend supports (capability, n/k multiples) is data in limits.py, read by es_dual/dispatch.py.
The library itself accepts n % 8 == 0 and k % 16 == 0 (16-byte rows for TMA); what the backend
claims is limits.N_MULTIPLE / K_MULTIPLE, proven by tests/test_cutlass_gpu.py::test_tails.
"""
from __future__ import annotations

import ctypes
import functools

from ..problem import Problem, mn_major_ld
from . import buckets, build, loader


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
def _workspace_bytes(n: int, k: int, num_experts: int, out_dtype_code: int, mode: int, sm_count: int) -> int:
    # No mode's workspace depends on total_m (the CUTLASS modes': per-expert arrays and tensor maps;
    # the native modes need none), so a call with a new row count costs no library query.
    return workspace_bytes(0, n, k, num_experts, out_dtype_code, mode, sm_count)


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


@functools.lru_cache(maxsize=4096)
def plan_cutlass(problem, offsets_dtype, mode: str | None = None, overlap: int | None = None):
    """The launch of a call of these sizes, ``launch(ptrs, tensors)`` (dispatch.Backend.plan), with
    everything but the data pointers and the stream worked out here, once. It reads only the pointers.

    mode: a mode name of the loaded library ("es" / "es_small_k": expert-specialized buckets of CUTLASS
        kernels, "native*": es_dual's own kernels, "single": one configuration; a tuning build has more,
        see buckets.TUNING_MODES). None: the expert-specialized mode for this shape (buckets.es_mode).
    overlap: how the bucket kernels are enqueued (buckets.OVERLAPS); None: buckets.DEFAULT_OVERLAP.

    The arguments are validated by the caller (es_dual.problem.check_call, with masked=True for the
    masked layout, problem.max_m > 0: ptrs[4] then points to the E counts; a gather, problem.a_rows > 0:
    ptrs[6] points to the int32 row index, and the mode is a native one): contiguous, on one CUDA
    device, shapes and dtypes of the tensor contract. A launch only enqueues work ordered before later
    work on the current stream of that device: no host synchronization, so it can be captured in a CUDA
    graph.
    """
    torch, raw_stream, out_codes = _torch_hooks()
    lib = loader.load_library()
    total_m, n, k, num_experts, max_m = problem.total_m, problem.n, problem.k, problem.num_experts, problem.max_m
    a_scale_ld = problem.a_scale_ld
    mode = mode or buckets.es_mode(total_m, n, k, num_experts, tokens_known=max_m == 0,
                                   k_major_scales=not a_scale_ld, gather=problem.a_rows > 0)
    code = mode_code(mode)
    overlap = buckets.DEFAULT_OVERLAP if overlap is None else overlap
    device = problem.device
    index = device.index
    sm_count = _sm_count(index)
    out_code = out_codes[problem.out_dtype]
    offsets_int64 = int(offsets_dtype == torch.int64)
    nbytes = _workspace_bytes(n, k, num_experts, out_code, code, sm_count)
    run, empty, uint8 = lib.es_dual_grouped_gemm, torch.empty, torch.uint8
    gather = problem.a_rows > 0  # the row index is a seventh pointer

    def launch(ptrs, tensors):
        # From the caching allocator on the current stream: reused only by work ordered after this call's.
        # A native mode needs none (nbytes 0: no allocation).
        workspace = empty(nbytes, dtype=uint8, device=device).data_ptr() if nbytes else None
        status = run(ptrs[0], ptrs[1], a_scale_ld, ptrs[6] if gather else None, ptrs[2], ptrs[3], ptrs[4],
                     offsets_int64, max_m, ptrs[5], total_m, n, k,
                     num_experts, out_code, code, overlap, index, sm_count, workspace, nbytes,
                     raw_stream(index))
        if status != loader.OK:
            raise RuntimeError(f"es_dual CUTLASS backend: {loader.last_error(lib)}")

    return launch


def grouped_gemm_cutlass(a, a_scale, b, b_scale, expert_offsets, out, *, mode: str | None = None,
                         overlap: int | None = None, single: bool = False) -> None:
    """Write ``out`` with the CUTLASS SM90 kernels of one mode of the bucket table (plan_cutlass says
    what mode and overlap mean; ``single=True`` means mode="single"), on validated arguments."""
    total_m, k = a.shape
    num_experts, n, _ = b.shape
    problem = Problem(total_m, n, k, num_experts, out.dtype, a.device, a_scale_ld=mn_major_ld(a_scale))
    launch = plan_cutlass(problem, expert_offsets.dtype, "single" if single else mode, overlap)
    tensors = (a, a_scale, b, b_scale, expert_offsets, out)
    launch(tuple(t.data_ptr() for t in tensors), lambda: tensors)

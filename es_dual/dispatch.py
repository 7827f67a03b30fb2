"""Backends declare what they support as data; the dispatcher picks one or explains why none fits.

Each backend answers ``not_supported_reasons(problem)``: an empty list means it can run the problem.
``backend="auto"`` takes the first backend of ``AUTO_ORDER`` (fastest first) that can run it; a named
backend that cannot run raises ``RuntimeError`` with its reasons; when nothing can run, the error lists
every backend's reasons. ``ES_DUAL_BACKEND`` replaces the default choice ("auto") of every call.

A call's choice depends only on its sizes (``Problem``), the offsets' dtype, the backend asked for and
ES_DUAL_BACKEND, so ``launch_for`` keeps, per such key, the chosen backend's launch plan: everything
the launch needs that is not a data pointer, worked out once (host time: a call with known sizes costs
a dictionary lookup, not a choice).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .device import device_capability
from .environment import getenv
from .problem import OUT_DTYPES, Problem


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    device_types: tuple[str, ...]
    # plan(problem, offsets_dtype) -> launch(ptrs, tensors), which writes out; ptrs: the data pointers of
    # (a, a_scale, b, b_scale, expert_offsets, out), tensors: a function returning those tensors (a
    # launch that needs more than the pointers calls it)
    plan: Callable
    availability: Callable[[torch.device], list[str]]  # reasons it cannot run on this device at all
    min_capability: tuple[int, int] | None = None  # CUDA devices only
    max_capability: tuple[int, int] | None = None
    out_dtypes: tuple[torch.dtype, ...] = OUT_DTYPES
    n_multiple: int = 16
    k_multiple: int = 16
    # reasons it cannot run this problem beyond the device, dtypes and sizes (MN-major scales, for one)
    problem_reasons: Callable[[Problem], list[str]] = lambda problem: []

    def device_reasons(self, device: torch.device) -> list[str]:
        """Why this backend cannot run on `device`, whatever the problem."""
        if device.type not in self.device_types:
            return [f"runs on {' or '.join(self.device_types)} tensors, not {device.type}"]
        reasons = []
        if device.type == "cuda":
            cap = device_capability(device)
            if self.min_capability and cap < self.min_capability:
                reasons.append(f"needs compute capability >= {_cc(self.min_capability)}, {device} has {_cc(cap)}")
            if self.max_capability and cap > self.max_capability:
                reasons.append(f"needs compute capability <= {_cc(self.max_capability)}, {device} has {_cc(cap)}")
        return reasons or self.availability(device)

    def not_supported_reasons(self, problem: Problem) -> list[str]:
        reasons = self.device_reasons(problem.device)
        if problem.out_dtype not in self.out_dtypes:
            reasons.append(f"does not write {problem.out_dtype}")
        for dim, size, multiple in (("n", problem.n, self.n_multiple), ("k", problem.k, self.k_multiple)):
            if size % multiple:
                reasons.append(f"needs {dim} to be a multiple of {multiple}, got {size}")
        if problem.a_rows and problem.max_m:
            reasons.append("gathers rows in the contiguous layout only, not the masked one")
        return reasons + self.problem_reasons(problem)


def _cc(cap) -> str:
    return f"{cap[0]}.{cap[1]}"


def _triton_availability(device: torch.device) -> list[str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return [f"triton is not importable ({exc})"]
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return ["CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before the first call"]
    return []


def _cutlass_availability(device: torch.device) -> list[str]:
    from .cutlass.launch import library_reasons

    return library_reasons()


def _plan_reference(problem, offsets_dtype):
    from .reference import run_reference, run_reference_masked

    run = run_reference_masked if problem.max_m else run_reference
    return lambda ptrs, tensors: run(*tensors())


def _plan_triton(problem, offsets_dtype):
    from .triton_ref.launch import plan_triton

    return plan_triton(problem)


def _plan_cutlass(single: bool) -> Callable:
    def plan(problem, offsets_dtype):
        from .cutlass.launch import plan_cutlass

        return plan_cutlass(problem, offsets_dtype, mode="single" if single else None)

    return plan


def _cutlass_problem_reasons(single: bool) -> Callable:
    """MN-major activation scales and gathered rows: only es_dual's native kernels read them (the CUTLASS
    kernels' scale layout is K-major, their rows one TMA box), so the expert-specialized backend takes them
    where a native mode fits."""
    def reasons(problem: Problem) -> list[str]:
        from .cutlass.buckets import native_fits

        if single:
            return ["reads K-major activation scales only (a_scale is MN-major)"] * bool(problem.a_scale_ld) + [
                "gathers no rows (its kernels read a's rows in TMA boxes)"] * bool(problem.a_rows)
        if problem.a_rows and problem.out_dtype != torch.bfloat16:
            return [f"gathers rows for torch.bfloat16 output only, not {problem.out_dtype}"]
        native_only = [what for what, asked in (("reads MN-major activation scales", problem.a_scale_ld),
                                                ("gathers rows", problem.a_rows)) if asked]
        if native_only and not native_fits(problem.total_m, problem.n, problem.num_experts):
            return [f"{what} with its native kernels only, which do not take this size" for what in native_only]
        return []

    return reasons


def _cutlass(name: str, description: str, single: bool) -> Backend:
    from .cutlass.limits import K_MULTIPLE, N_MULTIPLE, REQUIRED_CAPABILITY

    return Backend(
        name, description, ("cuda",), plan=_plan_cutlass(single), availability=_cutlass_availability,
        min_capability=REQUIRED_CAPABILITY, max_capability=REQUIRED_CAPABILITY,
        n_multiple=N_MULTIPLE, k_multiple=K_MULTIPLE, problem_reasons=_cutlass_problem_reasons(single),
    )


BACKENDS = {
    b.name: b
    for b in (
        _cutlass("cutlass", "CUTLASS SM90, expert-specialized: one grouped GEMM per token-count bucket", single=False),
        _cutlass("cutlass_single", "CUTLASS SM90, every expert in one 128x128x128 grouped GEMM", single=True),
        Backend("triton", "Triton kernel (FP8 tensor cores from sm_89, bf16 below; interpreter on CPU)",
                ("cuda", "cpu"), plan=_plan_triton, availability=_triton_availability),
        Backend("reference", "plain torch, float32 on dequantized inputs, loop over experts (host sync)",
                ("cuda", "cpu"), plan=_plan_reference, availability=lambda device: []),
    )
}

# auto: fastest first. CPU tensors get the reference: the interpreter is a test tool, not a fast path.
AUTO_ORDER = {"cuda": ("cutlass", "triton"), "cpu": ("reference",)}
BACKEND_NAMES = ("auto", *BACKENDS)


def select_backend(problem: Problem, backend: str) -> Backend:
    if backend == "auto":
        chosen = getenv("ES_DUAL_BACKEND")
        backend = "auto" if chosen is None else chosen
    if backend not in BACKEND_NAMES:
        names = ", ".join(repr(n) for n in BACKEND_NAMES)
        raise ValueError(f"backend: expected one of {names}, got {backend!r}")
    if backend != "auto":
        reasons = BACKENDS[backend].not_supported_reasons(problem)
        if reasons:
            raise RuntimeError(f"backend {backend!r} cannot run this problem: " + "; ".join(reasons))
        return BACKENDS[backend]
    for name in AUTO_ORDER.get(problem.device.type, ()):
        if not BACKENDS[name].not_supported_reasons(problem):
            return BACKENDS[name]
    listing = "\n".join(f"  {name}: " + "; ".join(b.not_supported_reasons(problem) or ["not tried automatically"])
                        for name, b in BACKENDS.items())
    raise RuntimeError(f"no es_dual backend can run this problem on {problem.device}:\n{listing}")


_LAUNCHES: dict = {}
_MAX_LAUNCHES = 4096  # distinct call sizes kept; serving sees a few hundred (one per token count and layer shape)


def launch_for(problem: Problem, offsets_dtype: torch.dtype, backend: str) -> Callable:
    """The launch of the backend chosen for this call (select_backend's rules), planned once per key."""
    key = (problem, offsets_dtype, backend, getenv("ES_DUAL_BACKEND") if backend == "auto" else None)
    launch = _LAUNCHES.get(key)
    if launch is None:
        launch = select_backend(problem, backend).plan(problem, offsets_dtype)
        if len(_LAUNCHES) >= _MAX_LAUNCHES:
            _LAUNCHES.clear()
        _LAUNCHES[key] = launch
    return launch


def available_backends(device=None) -> list[str]:
    """Names of the backends that can run on `device` (default: the current CUDA device, else the CPU)."""
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return [name for name, b in BACKENDS.items() if not b.device_reasons(device)]

"""Backends declare what they support as data; the dispatcher picks one or explains why none fits.

Each backend answers ``not_supported_reasons(problem)``: an empty list means it can run the problem.
``backend="auto"`` takes the first backend of ``AUTO_ORDER`` that can run; a named backend that cannot
run raises ``RuntimeError`` with its reasons; when nothing can run, the error lists every backend's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from .problem import OUT_DTYPES, Problem


@dataclass(frozen=True)
class Backend:
    name: str
    device_types: tuple[str, ...]
    run: Callable  # run(problem, a, a_scale, b, b_scale, expert_offsets, out) -> None, writes out
    extra_reasons: Callable[[Problem], list[str]] = lambda problem: []
    out_dtypes: tuple[torch.dtype, ...] = OUT_DTYPES

    def not_supported_reasons(self, problem: Problem) -> list[str]:
        if problem.device.type not in self.device_types:
            return [f"runs on {' or '.join(self.device_types)} tensors, got tensors on {problem.device}"]
        reasons = []
        if problem.out_dtype not in self.out_dtypes:
            reasons.append(f"does not write {problem.out_dtype}")
        return reasons + self.extra_reasons(problem)


def _run_reference(problem, a, a_scale, b, b_scale, expert_offsets, out):
    from .reference import run_reference

    run_reference(a, a_scale, b, b_scale, expert_offsets, out)


def _run_triton(problem, a, a_scale, b, b_scale, expert_offsets, out):
    from .triton_ref.launch import grouped_gemm_triton

    grouped_gemm_triton(problem, a, a_scale, b, b_scale, expert_offsets, out)


def _triton_reasons(problem: Problem) -> list[str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return [f"triton is not importable ({exc})"]
    if problem.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return ["CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before the first call"]
    return []


def _cutlass_reasons(problem: Problem) -> list[str]:
    return ["the CUTLASS backend is not part of this build yet"]


BACKENDS = {
    b.name: b
    for b in (
        Backend("cutlass", ("cuda",), run=None, extra_reasons=_cutlass_reasons),
        Backend("cutlass_single", ("cuda",), run=None, extra_reasons=_cutlass_reasons),
        Backend("triton", ("cuda", "cpu"), run=_run_triton, extra_reasons=_triton_reasons),
        Backend("reference", ("cuda", "cpu"), run=_run_reference),
    )
}

# auto: the fastest first; on CPU tensors only the reference is automatic (the interpreter is a test tool)
AUTO_ORDER = {"cuda": ("cutlass", "triton"), "cpu": ("reference",)}


def select_backend(problem: Problem, backend: str) -> Backend:
    if backend == "auto":
        backend = os.environ.get("ES_DUAL_BACKEND", "auto")
    if backend != "auto" and backend not in BACKENDS:
        names = ", ".join(repr(n) for n in ("auto", *BACKENDS))
        raise ValueError(f"backend: expected one of {names}, got {backend!r}")
    if backend != "auto":
        reasons = BACKENDS[backend].not_supported_reasons(problem)
        if reasons:
            raise RuntimeError(f"backend {backend!r} cannot run this problem: " + "; ".join(reasons))
        return BACKENDS[backend]
    candidates = AUTO_ORDER.get(problem.device.type, ())
    all_reasons = {}
    for name in candidates:
        reasons = BACKENDS[name].not_supported_reasons(problem)
        if not reasons:
            return BACKENDS[name]
        all_reasons[name] = reasons
    listing = "\n".join(f"  {name}: " + "; ".join(r) for name, r in all_reasons.items()) or "  (no backend for this device type)"
    raise RuntimeError(f"no es_dual backend can run this problem on {problem.device}:\n{listing}")

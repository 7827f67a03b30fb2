"""Everything the benchmark can time, as one table: name -> how to prepare a call on given inputs.

``prepare(problem, inputs)`` returns a zero-argument function that runs one call and returns its output,
or raises ``Unavailable`` with the reason. Preparation (allocations, layout changes a provider needs)
happens outside the timed region.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..api import grouped_gemm_fp8
from ..dispatch import BACKENDS


class Unavailable(Exception):
    """The provider cannot run here (missing package, wrong device, unsupported shape)."""


@dataclass(frozen=True)
class Provider:
    name: str
    description: str
    prepare: Callable  # prepare(problem, inputs) -> Callable[[], torch.Tensor]


def _es_dual(backend: str) -> Callable:
    def prepare(problem, inputs):
        reasons = BACKENDS[backend].not_supported_reasons(problem)
        if reasons:
            raise Unavailable("; ".join(reasons))
        out = torch.empty(problem.total_m, problem.n, dtype=problem.out_dtype, device=problem.device)
        return lambda: grouped_gemm_fp8(**inputs, out=out, backend=backend)

    return prepare


PROVIDERS = {
    p.name: p
    for p in (
        Provider("cutlass", "es_dual CUTLASS SM90, expert-specialized buckets", _es_dual("cutlass")),
        Provider("cutlass_single", "es_dual CUTLASS SM90, one 128x128x128 configuration", _es_dual("cutlass_single")),
        Provider("triton", "es_dual Triton kernel", _es_dual("triton")),
        Provider("reference", "es_dual reference (torch, float32, loop over experts)", _es_dual("reference")),
    )
}

DEFAULT_PROVIDERS = {"cuda": ("cutlass", "cutlass_single", "triton"), "cpu": ("reference", "triton")}

"""torch integration: ``torch.ops.es_dual.grouped_gemm_fp8``, a custom op that writes into ``out``.

The schema declares ``out`` as mutated, so ``torch.compile(fullgraph=True)`` keeps the call in the graph
(functionalized around the mutation) and CUDA graphs capture it like any kernel launch. The fake
implementation has nothing to compute: the op returns nothing and ``out`` keeps its metadata.
"""
from __future__ import annotations

import torch

from .dispatch import launch_for
from .problem import check_call

SCHEMA = (
    "(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor expert_offsets, Tensor(a!) out, "
    'str backend="auto") -> ()'
)
torch.library.define("es_dual::grouped_gemm_fp8", SCHEMA)


@torch.library.impl("es_dual::grouped_gemm_fp8", ("CPU", "CUDA"))
def _grouped_gemm_fp8(a, a_scale, b, b_scale, expert_offsets, out, backend="auto") -> None:
    """check -> choose backend -> launch; a refused call raises before anything touches out."""
    problem, ptrs = check_call(a, a_scale, b, b_scale, expert_offsets, out)
    launch = launch_for(problem, expert_offsets.dtype, backend)
    if problem.total_m:
        launch(ptrs, lambda: (a, a_scale, b, b_scale, expert_offsets, out))


@torch.library.register_fake("es_dual::grouped_gemm_fp8")
def _grouped_gemm_fp8_fake(a, a_scale, b, b_scale, expert_offsets, out, backend="auto") -> None:
    return None

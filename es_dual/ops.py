"""torch integration: ``torch.ops.es_dual.grouped_gemm_fp8``, a custom op that writes into ``out``.

The schema declares ``out`` as mutated, so ``torch.compile(fullgraph=True)`` keeps the call in the graph
(functionalized around the mutation) and CUDA graphs capture it like any kernel launch. The fake
implementation has nothing to compute: the op returns nothing and ``out`` keeps its metadata.
"""
from __future__ import annotations

import torch

from .dispatch import launch_for
from .problem import check_call, check_masked_inputs

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


# The masked layout: a (E, max_m, k), masked_m (E,) counts, out (E, max_m, n); the same checks, choice and
# launch (every backend takes both layouts).
MASKED_SCHEMA = SCHEMA.replace("Tensor expert_offsets", "Tensor masked_m")
torch.library.define("es_dual::grouped_gemm_fp8_masked", MASKED_SCHEMA)


@torch.library.impl("es_dual::grouped_gemm_fp8_masked", ("CPU", "CUDA"))
def _grouped_gemm_fp8_masked(a, a_scale, b, b_scale, masked_m, out, backend="auto") -> None:
    problem = check_masked_inputs(a, a_scale, b, b_scale, masked_m, out)
    launch = launch_for(problem, masked_m.dtype, backend)
    if problem.total_m:
        tensors = (a, a_scale, b, b_scale, masked_m, out)
        launch(tuple(t.data_ptr() for t in tensors), lambda: tensors)


@torch.library.register_fake("es_dual::grouped_gemm_fp8_masked")
def _grouped_gemm_fp8_masked_fake(a, a_scale, b, b_scale, masked_m, out, backend="auto") -> None:
    return None

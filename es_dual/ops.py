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


def _check_choose_launch(a, a_scale, b, b_scale, rows, out, backend, masked: bool) -> None:
    """check -> choose backend -> launch, for either layout (rows: the offsets, or masked_m); a refused call
    raises before anything touches out."""
    problem, ptrs = check_call(a, a_scale, b, b_scale, rows, out, masked)
    launch = launch_for(problem, rows.dtype, backend)
    if problem.total_m:
        launch(ptrs, lambda: (a, a_scale, b, b_scale, rows, out))


def _grouped_gemm_fp8(a, a_scale, b, b_scale, expert_offsets, out, backend="auto") -> None:
    _check_choose_launch(a, a_scale, b, b_scale, expert_offsets, out, backend, False)


# registered by call, not as a decorator: the public entry points also call the function itself
torch.library.impl("es_dual::grouped_gemm_fp8", ("CPU", "CUDA"))(_grouped_gemm_fp8)


def dispatcher_adds_nothing(tensors) -> bool:
    """Whether calling an op's implementation directly does what going through the torch dispatcher does,
    for a call on these tensors: plain tensors (no subclass, none needing grad while grad mode is on),
    and nothing that sees ops as they run: no torch.compile tracing, TorchDispatchMode or
    TorchFunctionMode, functorch transform (vmap, grad), jit trace or profiler. Then the dispatcher only
    routes to the implementation (about 5 µs of host time on the H200 machine's host); the caller bumps
    the version counter of the mutated tensor, as the dispatcher's ADInplaceOrView step does."""
    if (torch.compiler.is_compiling() or _dispatch_modes() or _function_modes() or _transforms() is not None
            or _profiling() or _jit_tracing() is not None):
        return False
    grad = _grad_enabled()
    for t in tensors:
        if type(t) is not _Tensor or (grad and t.requires_grad):
            return False
    return True


_Tensor = torch.Tensor
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._len_torch_function_stack
_transforms = torch._C._functorch.peek_interpreter_stack
_profiling = torch._C._autograd._profiler_enabled
_jit_tracing = torch._C._get_tracing_state
_grad_enabled = torch.is_grad_enabled
bump_version = torch.autograd.graph.increment_version


@torch.library.register_fake("es_dual::grouped_gemm_fp8")
def _grouped_gemm_fp8_fake(a, a_scale, b, b_scale, expert_offsets, out, backend="auto") -> None:
    return None


# The masked layout: a (E, max_m, k), masked_m (E,) counts, out (E, max_m, n); the same checks, choice and
# launch (every backend takes both layouts).
MASKED_SCHEMA = SCHEMA.replace("Tensor expert_offsets", "Tensor masked_m")
torch.library.define("es_dual::grouped_gemm_fp8_masked", MASKED_SCHEMA)


def _grouped_gemm_fp8_masked(a, a_scale, b, b_scale, masked_m, out, backend="auto") -> None:
    _check_choose_launch(a, a_scale, b, b_scale, masked_m, out, backend, True)


torch.library.impl("es_dual::grouped_gemm_fp8_masked", ("CPU", "CUDA"))(_grouped_gemm_fp8_masked)


@torch.library.register_fake("es_dual::grouped_gemm_fp8_masked")
def _grouped_gemm_fp8_masked_fake(a, a_scale, b, b_scale, masked_m, out, backend="auto") -> None:
    return None

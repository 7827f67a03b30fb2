"""The public entry points call the op's implementation straight when the torch dispatcher would add
nothing (es_dual.ops.dispatcher_adds_nothing), and go through the dispatcher whenever something watches or
transforms ops: the watcher still sees the op, and the result and version counter are the same either way."""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import es_dual
from es_dual import ops
from es_dual.accuracy import relative_errors, tolerance
from support import assert_matches, make_inputs, poisoned_out, reference64

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKEND = "auto" if DEVICE == "cuda" else "reference"


def _call():
    inputs = make_inputs([3, 0, 5], 128, 256, seed=1, device=DEVICE)
    out = poisoned_out(8, 128, torch.bfloat16, DEVICE)
    return inputs, out


class _SeenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class _SeenFunctions(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_plain_call_goes_straight_and_bumps_the_version():
    """The version counter of out moves (autograd's check that a saved tensor was not modified relies on
    it), at least as far as through the dispatcher. On the GPU the dispatcher's call of the op moves it not
    at all (no autograd kernel is registered, so nothing marks the write); on the CPU the reference
    backend's own writes into out move it."""
    inputs, out = _call()
    assert ops.dispatcher_adds_nothing((*inputs.values(), out))
    before = out._version
    es_dual.grouped_gemm_fp8(**inputs, out=out, backend=BACKEND)
    straight = out._version - before
    assert_matches(out, reference64(inputs))
    before = out._version
    torch.ops.es_dual.grouped_gemm_fp8(*inputs.values(), out, BACKEND)  # through the dispatcher
    assert straight >= 1 and straight >= out._version - before


@pytest.mark.parametrize("mode", [_SeenOps, _SeenFunctions])
def test_a_mode_sees_the_op(mode):
    inputs, out = _call()
    with mode() as watcher:
        assert not ops.dispatcher_adds_nothing((*inputs.values(), out))
        es_dual.grouped_gemm_fp8(**inputs, out=out, backend=BACKEND)
    assert any("es_dual.grouped_gemm_fp8" in name for name in watcher.seen), watcher.seen
    assert_matches(out, reference64(inputs))


def test_the_profiler_sees_the_op():
    inputs, out = _call()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert not ops.dispatcher_adds_nothing((*inputs.values(), out))
        es_dual.grouped_gemm_fp8(**inputs, out=out, backend=BACKEND)
    assert any("es_dual::grouped_gemm_fp8" in e.name for e in prof.events())


def test_grad_subclass_and_transforms_take_the_dispatcher():
    inputs, out = _call()
    tensors = (*inputs.values(), out)
    scale = inputs["a_scale"].clone().requires_grad_()
    assert not ops.dispatcher_adds_nothing((inputs["a"], scale, *tensors[2:]))
    with torch.no_grad():
        assert ops.dispatcher_adds_nothing((inputs["a"], scale, *tensors[2:]))

    class Sub(torch.Tensor):
        pass

    assert not ops.dispatcher_adds_nothing((*tensors[:-1], out.as_subclass(Sub)))
    seen = []
    torch.vmap(lambda x: seen.append(ops.dispatcher_adds_nothing((x, *tensors[1:]))) or x)(inputs["a_scale"])
    assert seen == [False]


def test_masked_entry_goes_straight_too():
    inputs, out = _call()
    a = inputs["a"].view(2, 4, -1)
    a_scale = inputs["a_scale"].view(2, 4, -1)
    b, b_scale = inputs["b"][:2].contiguous(), inputs["b_scale"][:2].contiguous()
    masked_m = torch.tensor([3, 4], dtype=torch.int32, device=DEVICE)
    out = torch.empty(2, 4, 128, dtype=torch.bfloat16, device=DEVICE)
    before = out._version
    es_dual.grouped_gemm_fp8_masked(a, a_scale, b, b_scale, masked_m, out=out, backend=BACKEND)
    assert out._version > before
    want = es_dual.grouped_gemm_fp8_masked_reference(a, a_scale, b, b_scale, masked_m)
    max_rel, rms_rel = relative_errors(torch.cat([out[0, :3], out[1]]), torch.cat([want[0, :3], want[1]]))
    max_tol, rms_tol = tolerance(torch.bfloat16, both_rounded=True)
    assert max_rel <= max_tol and rms_rel <= rms_tol

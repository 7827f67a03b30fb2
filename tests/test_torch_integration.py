"""The custom op: schema, opcheck, torch.compile(fullgraph=True), CUDA graphs."""
import pytest
import torch

import es_dual
from es_dual.dispatch import available_backends
from support import assert_matches, make_inputs, needs_gpu, needs_interpreter, poisoned_out, reference64

OP = torch.ops.es_dual.grouped_gemm_fp8


def _args(device, counts=(3, 0, 9, 1), n=128, k=256, seed=0):
    inputs = make_inputs(list(counts), n, k, seed, device)
    out = poisoned_out(sum(counts), n, torch.bfloat16, device)
    return inputs, out


def test_schema():
    schema = str(OP.default._schema)
    assert schema == (
        "es_dual::grouped_gemm_fp8(Tensor a, Tensor a_scale, Tensor b, Tensor b_scale, Tensor expert_offsets, "
        'Tensor(a!) out, str backend="auto") -> ()'
    )


def _backends(device):
    return [b for b in available_backends(device)]


# opcheck's test_schema compares inputs before and after with torch.allclose, which torch does not
# implement for float8 tensors; _check_mutates_only_out below does that comparison bit for bit instead.
OPCHECK_UTILS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _opcheck(inputs, out, backend):
    torch.library.opcheck(OP, (*inputs.values(), out, backend), test_utils=OPCHECK_UTILS)
    _check_mutates_only_out(inputs, out, backend)


def _check_mutates_only_out(inputs, out, backend):
    before = {name: t.clone() for name, t in inputs.items()}
    out.fill_(float("nan"))
    OP(*inputs.values(), out, backend)
    for name, t in inputs.items():
        assert torch.equal(t.view(torch.uint8), before[name].view(torch.uint8)), f"{name} was modified"
    assert not out.isnan().any(), "out was not written"


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_interpreter)])
def test_opcheck_cpu(backend):
    inputs, out = _args("cpu")
    _opcheck(inputs, out, backend)


def _compiled_call(backend):
    @torch.compile(fullgraph=True)
    def layer(a, a_scale, b, b_scale, offsets):
        out = es_dual.grouped_gemm_fp8(a, a_scale, b, b_scale, offsets, backend=backend)
        return out.float() * 2  # something around the op, so the graph is more than the call
    return layer


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_interpreter)])
def test_compile_fullgraph_cpu(backend):
    torch._dynamo.reset()
    inputs, _ = _args("cpu")
    got = _compiled_call(backend)(*inputs.values())
    assert_matches((got / 2).to(torch.bfloat16), reference64(inputs))


@needs_gpu
def test_opcheck_gpu():
    device = torch.device("cuda")
    for backend in _backends(device):
        inputs, out = _args(device)
        _opcheck(inputs, out, backend)


@needs_gpu
def test_compile_fullgraph_gpu():
    device = torch.device("cuda")
    for backend in _backends(device):
        torch._dynamo.reset()
        inputs, _ = _args(device)
        got = _compiled_call(backend)(*inputs.values())
        assert_matches((got / 2).to(torch.bfloat16), reference64(inputs))


@needs_gpu
@pytest.mark.parametrize("backend", ["cutlass", "triton"])
def test_cuda_graph_follows_new_contents_100_times(backend):
    """Capture once; then 100 times: new offsets (same total), new activations and scales, replay, compare."""
    device = torch.device("cuda")
    if backend not in _backends(device):
        pytest.skip(f"{backend} is not available on this GPU")
    num_experts, total_m, n, k = 16, 300, 256, 512
    gen = torch.Generator().manual_seed(0)
    inputs, out = _args(device, counts=[total_m // num_experts] * (num_experts - 1) + [total_m - (total_m // num_experts) * (num_experts - 1)], n=n, k=k)
    es_dual.grouped_gemm_fp8(**inputs, out=out, backend=backend)  # compile / load outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        es_dual.grouped_gemm_fp8(**inputs, out=out, backend=backend)
    for step in range(100):
        cuts = torch.randint(0, total_m + 1, (num_experts - 1,), generator=gen).sort().values.tolist()
        counts = [hi - lo for lo, hi in zip([0] + cuts, cuts + [total_m])]
        fresh = make_inputs(counts, n, k, seed=step, device=device)
        for name in ("a", "a_scale", "expert_offsets"):
            inputs[name].copy_(fresh[name])  # same weights, new routing and activations
        out.fill_(float("nan"))
        graph.replay()
        assert_matches(out, reference64(inputs))

import pytest
import torch

import es_dual
from support import make_inputs, offsets_of


def _hand_written(inputs) -> torch.Tensor:
    """The operation of DESIGN.md written out element by element in float64."""
    a, a_s = inputs["a"].double(), inputs["a_scale"].double()
    b, b_s = inputs["b"].double(), inputs["b_scale"].double()
    offs = inputs["expert_offsets"].tolist()
    total_m, k = a.shape
    n = b.shape[1]
    group = torch.arange(k) // 128  # the scale group of every element of K
    out = torch.zeros(total_m, n, dtype=torch.float64)
    for e in range(len(offs) - 1):
        for r in range(offs[e], offs[e + 1]):
            for c in range(n):
                out[r, c] = (a[r] * a_s[r, group] * b[e, c] * b_s[e, c // 128, group]).sum()
    return out


@pytest.mark.parametrize("counts,n,k", [([2, 0, 3], 16, 16), ([1, 2], 144, 160), ([0, 0, 2], 16, 272)])
def test_reference_matches_hand_written(counts, n, k):
    inputs = make_inputs(counts, n, k, seed=1, device="cpu")
    out = es_dual.grouped_gemm_fp8_reference(**inputs, out_dtype=torch.float16)
    expected = _hand_written(inputs)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), expected, rtol=2**-10, atol=1e-6 * expected.abs().max().item())


def test_reference_exact_inputs_bit_exact():
    inputs = make_inputs([3, 0, 1, 4], 32, 256, seed=2, device="cpu", exact=True)
    out = es_dual.grouped_gemm_fp8_reference(**inputs)
    assert torch.equal(out, _hand_written(inputs).to(torch.bfloat16))


def test_reference_is_the_reference_backend():
    inputs = make_inputs([5, 1], 48, 128, seed=3, device="cpu")
    a = es_dual.grouped_gemm_fp8_reference(**inputs)
    b = es_dual.grouped_gemm_fp8(**inputs, backend="reference")
    c = es_dual.grouped_gemm_fp8(**inputs)  # auto on CPU tensors is the reference
    assert torch.equal(a, b) and torch.equal(a, c)


def test_unquantized_end_to_end():
    """Against the unquantized product: DeepGEMM's similarity 1 - 2*sum(xy)/sum(x^2+y^2) below 1e-3."""
    g = torch.Generator().manual_seed(4)
    counts, n, k = [7, 0, 30, 1], 256, 512
    x = torch.randn(sum(counts), k, generator=g)
    w = torch.randn(len(counts), n, k, generator=g)
    a, a_s = es_dual.quantize_fp8_per_token_group(x)
    b, b_s = es_dual.quantize_fp8_per_block(w)
    offs = offsets_of(counts, "cpu")
    out = es_dual.grouped_gemm_fp8_reference(a, a_s, b, b_s, offs).double()
    exact = torch.cat([x[offs[e] : offs[e + 1]].double() @ w[e].double().T for e in range(len(counts))])
    diff = 1 - 2 * (out * exact).sum() / (out * out + exact * exact).sum()
    assert diff.item() < 1e-3

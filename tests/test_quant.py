import pytest
import torch

import es_dual
from es_dual.quant import FP8_MAX, FP8_MAX_RECIPROCAL, dequantize_per_block, dequantize_per_token_group

# e4m3 keeps 3 mantissa bits: rounding to nearest costs at most 2^-4 of the value (half of 2^-3), and
# values far below the group's amax may fall into subnormals, where the error is at most half of the
# smallest subnormal step (2^-10) times the scale.
E4M3_REL = 2.0**-4
E4M3_SUBNORMAL_HALF_STEP = 2.0**-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,k", [(0, 128), (1, 16), (3, 128), (5, 200), (7, 384)])
def test_per_token_group_round_trip(m, k, dtype):
    x = (torch.randn(m, k) * 3).to(dtype)
    q, s = es_dual.quantize_fp8_per_token_group(x)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (m, k) and q.is_contiguous()
    assert s.dtype == torch.float32 and s.shape == (m, -(-k // 128))
    back = dequantize_per_token_group(q, s)
    bound = E4M3_REL * x.float().abs() + E4M3_SUBNORMAL_HALF_STEP * s.repeat_interleave(128, 1)[:, :k]
    assert ((back - x.float()).abs() <= bound * 1.0001).all()
    # the largest element of each group maps to +-448 exactly
    if m:
        assert q.float().abs().amax().item() == FP8_MAX


def test_per_token_group_zero_groups_are_finite_zeros():
    x = torch.zeros(4, 256)
    x[1, 130] = 2.0  # one non-zero group among zero groups
    q, s = es_dual.quantize_fp8_per_token_group(x)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert q.float()[0].eq(0).all() and q.float()[1, :128].eq(0).all()
    assert dequantize_per_token_group(q, s)[1, 130].item() == 2.0


@pytest.mark.parametrize("shape", [(16, 16), (128, 128), (200, 144), (3, 130, 272)])
def test_per_block_round_trip(shape):
    w = torch.randn(*shape, dtype=torch.bfloat16)
    q, s = es_dual.quantize_fp8_per_block(w)
    *lead, n, k = shape
    assert q.shape == tuple(shape) and q.dtype == torch.float8_e4m3fn
    assert s.shape == (*lead, -(-n // 128), -(-k // 128))
    back = dequantize_per_block(q, s)
    full_scale = s.repeat_interleave(128, -2)[..., :n, :].repeat_interleave(128, -1)[..., :k]
    bound = E4M3_REL * w.float().abs() + E4M3_SUBNORMAL_HALF_STEP * full_scale
    assert ((back - w.float()).abs() <= bound * 1.0001).all()


def test_per_block_scale_is_block_amax():
    w = torch.zeros(256, 256)
    w[5, 7], w[130, 3], w[200, 250] = 448.0 * 3, -448.0 / 8, 0.0
    _, s = es_dual.quantize_fp8_per_block(w)
    # amax times the float32 reciprocal of 448 (es_dual.quant), within one float32 rounding of amax / 448
    expected = torch.tensor([448.0 * 3, 448.0 / 8]) * FP8_MAX_RECIPROCAL
    assert torch.equal(torch.stack([s[0, 0], s[1, 0]]), expected)
    assert torch.allclose(expected, torch.tensor([3.0, 1 / 8]), rtol=2**-23, atol=0)
    assert torch.isfinite(s).all() and s[1, 1].item() > 0  # the all-zero block


def test_quantizers_reject_bad_input():
    with pytest.raises(ValueError, match="x: expected 2 dimensions"):
        es_dual.quantize_fp8_per_token_group(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="x: expected dtype"):
        es_dual.quantize_fp8_per_token_group(torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="w: expected at least 2 dimensions"):
        es_dual.quantize_fp8_per_block(torch.zeros(4))

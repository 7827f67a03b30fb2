"""Shared test inputs, the float64 reference and the tolerance check."""
from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import strategies as st

import es_dual
from es_dual.accuracy import relative_errors, tolerance
from es_dual.quant import dequantize_per_block, dequantize_per_token_group

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Triton on CPU tensors runs under the interpreter, which conftest.py turns on only without a GPU.
needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (no GPU)")


def offsets_of(counts, device, dtype=torch.int32) -> torch.Tensor:
    offs = [0]
    for c in counts:
        offs.append(offs[-1] + c)
    return torch.tensor(offs, dtype=dtype, device=device)


def make_inputs(counts, n, k, seed, device, exact=False) -> dict:
    """Quantized inputs for one routing, generated on `device`. exact=True gives small integers and
    power-of-two scales, whose products and sums are exact in float32, so every correct implementation
    agrees bit for bit."""
    g = torch.Generator(device=device).manual_seed(seed)
    num_experts, total_m = len(counts), sum(counts)
    groups_k, groups_n = math.ceil(k / 128), math.ceil(n / 128)

    def rand(fn, *shape, **kw):
        return fn(*shape, generator=g, device=device, **kw)

    if exact:
        a = rand(torch.randint, -4, 5, (total_m, k)).float().to(torch.float8_e4m3fn)
        b = rand(torch.randint, -4, 5, (num_experts, n, k)).float().to(torch.float8_e4m3fn)
        a_scale = 2.0 ** rand(torch.randint, -3, 3, (total_m, groups_k)).float()
        b_scale = 2.0 ** rand(torch.randint, -3, 3, (num_experts, groups_n, groups_k)).float()
    else:
        # per-group magnitudes that differ by up to 2^6 make a wrong scale index visible
        x = rand(torch.randn, total_m, k)
        x *= (2.0 ** rand(torch.randint, -3, 4, (total_m, groups_k)).float()).repeat_interleave(128, 1)[:, :k]
        a, a_scale = es_dual.quantize_fp8_per_token_group(x)
        b, b_scale = es_dual.quantize_fp8_per_block(rand(torch.randn, num_experts, n, k) * 0.05)
    return dict(a=a, a_scale=a_scale, b=b, b_scale=b_scale, expert_offsets=offsets_of(counts, device))


def run_backend(inputs, out_dtype, backend) -> torch.Tensor:
    """One call into a NaN-poisoned out (every unwritten element shows), through the public API."""
    total_m, n = inputs["a"].shape[0], inputs["b"].shape[1]
    out = poisoned_out(total_m, n, out_dtype, inputs["a"].device)
    assert es_dual.grouped_gemm_fp8(**inputs, out=out, backend=backend) is out
    return out


def reference64(inputs) -> torch.Tensor:
    """float64 product of the dequantized inputs, on their device; rows of no expert stay NaN."""
    a = dequantize_per_token_group(inputs["a"], inputs["a_scale"]).double()
    offs = inputs["expert_offsets"].tolist()
    out = torch.full((a.shape[0], inputs["b"].shape[1]), float("nan"), dtype=torch.float64, device=a.device)
    for e in range(len(offs) - 1):
        b = dequantize_per_block(inputs["b"][e], inputs["b_scale"][e]).double()
        out[offs[e] : offs[e + 1]] = a[offs[e] : offs[e + 1]] @ b.T
    return out


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """out (bf16/fp16) against the float64 reference, by max and RMS relative error (es_dual.accuracy),
    computed on out's device (only the verdict crosses to the host)."""
    max_tol, rms_tol = tolerance(out.dtype)
    out = out.detach()
    assert not out.isnan().any(), f"{int(out.isnan().sum())} output elements are NaN (unwritten?)"
    max_rel, rms_rel = relative_errors(out, ref)
    assert max_rel <= max_tol and rms_rel <= rms_tol, f"max rel {max_rel:.3g} (tol {max_tol:.3g}), rms rel {rms_rel:.3g} (tol {rms_tol:.3g})"


def assert_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Rows of experts match ref; rows of no expert (NaN in ref) must still hold the NaN poison."""
    out, ref = out.detach(), ref.to(out.device)
    owned = ~ref.isnan().all(dim=1)
    assert out[~owned].isnan().all(), "rows that belong to no expert were written"
    assert_close(out[owned], ref[owned])


def mn_major(a_scale: torch.Tensor, ld: int) -> torch.Tensor:
    """a_scale's values in MN-major storage with leading dimension ld (>= total_m; the rows past total_m
    of each group are padding, as DeepGEMM's TMA-aligned scales have)."""
    total_m, groups = a_scale.shape
    storage = torch.full((groups, ld), float("nan"), dtype=a_scale.dtype, device=a_scale.device)
    storage[:, :total_m] = a_scale.t()
    return storage.t()[:total_m]


def poisoned_out(total_m, n, out_dtype, device) -> torch.Tensor:
    return torch.full((total_m, n), float("nan"), dtype=out_dtype, device=device)


ROUTING_KINDS = ("mixed", "one_expert", "skew", "all_empty", "boundaries")


@st.composite
def routings(draw, max_experts: int, max_tokens: int, boundaries=(16, 32, 64, 128), max_total=None,
             kinds=ROUTING_KINDS):
    """Per-expert token counts: zeros, ones, boundary values +-1, one expert with everything, heavy skew.
    The total stays within max_total (default 2 * max_tokens)."""
    num_experts = draw(st.integers(1, max_experts))
    kind = draw(st.sampled_from(kinds))
    special = sorted({max(0, b + d) for b in boundaries for d in (-1, 0, 1)} | {0, 1})
    special = [s for s in special if s <= max_tokens]
    if kind == "all_empty":
        return [0] * num_experts
    if kind == "one_expert":
        counts = [0] * num_experts
        counts[draw(st.integers(0, num_experts - 1))] = draw(st.integers(1, max_tokens))
        return counts
    if kind == "skew":
        counts = draw(st.lists(st.sampled_from([0, 0, 1, 2, 3]), min_size=num_experts, max_size=num_experts))
        counts[draw(st.integers(0, num_experts - 1))] = draw(st.integers(max_tokens // 2, max_tokens))
        return counts
    value = st.sampled_from(special) if kind == "boundaries" else st.one_of(st.sampled_from(special), st.integers(0, max_tokens))
    counts = draw(st.lists(value, min_size=num_experts, max_size=num_experts))
    budget = max_total if max_total is not None else max_tokens * 2
    trimmed = []
    for c in counts:
        trimmed.append(min(c, budget))
        budget -= trimmed[-1]
    return trimmed

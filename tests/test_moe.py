"""The fused MoE layer (es_dual.moe) against its references, its fused kernels against es_dual's quantizer.

On the CPU (Triton interpreter) shapes are small and the GEMM backends are "reference" and "triton"; on a
GPU shapes are larger and every available GEMM backend runs. Hypothesis draws the routing (experts that get
no token, one hot set of experts, top-k 1..8), the shape from a menu and a seed for the data.

Tolerances: against fused_moe_fp8_reference, es_dual.moe.reference.layer_tolerance (explained there);
against the unquantized layer, DeepGEMM's similarity (see test_close_to_unquantized_layer). The fused
quantizing kernels are held to bit equality with es_dual.quantize_fp8_per_token_group.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import es_dual
from es_dual.accuracy import relative_errors
from es_dual.dispatch import available_backends
from es_dual.moe import fused_moe_fp8, fused_moe_fp8_reference, moe_float_reference
from es_dual.moe import layer as layer_module
from es_dual.moe.layer import (
    ROUTE_BY_RANK_PAIRS, quantize_scatter, route, route_by_chunks, route_by_rank, route_by_sort, silu_mul_quantize,
)
from es_dual.moe.reference import layer_tolerance
from es_dual.quant import dequantize_per_block
from support import needs_gpu

ON_GPU = torch.cuda.is_available()
FP8 = torch.float8_e4m3fn
# (hidden, intermediate): multiples of 128, and multiples of 16 that are not (a partial last scale group)
SHAPES = ((7168, 256), (4096, 384), (1024, 512), (1040, 208)) if ON_GPU else \
    ((128, 128), (256, 128), (128, 256), (144, 80))
MAX_EXPERTS = 64 if ON_GPU else 8
MAX_TOKENS = 512 if ON_GPU else 64
GEMM_BACKENDS = tuple(b for b in available_backends() if b != "reference") if ON_GPU else ("reference", "triton")
# At most 100 examples a test: on a GPU each builds up to 64 experts' weights and runs the reference's
# expert loop; 100 routings cover the strategy's kinds and sizes many times over.
EXAMPLES = min(settings.default.max_examples, 100)


@dataclass(frozen=True)
class Routing:
    tokens: int
    num_experts: int
    topk: int
    kind: str  # "uniform": any topk experts; "subset": some experts only; "hot": every token the same topk
    seed: int


@st.composite
def routings(draw, max_experts=MAX_EXPERTS, max_tokens=MAX_TOKENS) -> Routing:
    num_experts = draw(st.integers(1, max_experts))
    topk = draw(st.integers(1, min(8, num_experts)))
    tokens = draw(st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(0, max_tokens)))
    kind = draw(st.sampled_from(["uniform", "subset", "hot"]))
    return Routing(tokens, num_experts, topk, kind, draw(st.integers(0, 2**31 - 1)))


def topk_ids_of(r: Routing, device, dtype=torch.int32) -> torch.Tensor:
    """(T, topk) distinct experts per token; "subset" and "hot" leave experts without tokens."""
    g = torch.Generator().manual_seed(r.seed)
    if r.kind == "uniform":
        experts = torch.arange(r.num_experts)
    else:
        size = r.topk if r.kind == "hot" else int(torch.randint(r.topk, r.num_experts + 1, (1,), generator=g))
        experts = torch.randperm(r.num_experts, generator=g)[:size]
    picks = torch.rand(r.tokens, len(experts), generator=g).topk(r.topk, dim=1).indices
    return experts[picks].to(dtype=dtype, device=device)


def make_hidden(tokens, hidden_size, seed, device) -> torch.Tensor:
    """bf16 (tokens, hidden_size); groups of 128 differ in magnitude by up to 2^6, so a scale applied to the
    wrong group shows."""
    g = torch.Generator().manual_seed(seed)
    groups = -(-hidden_size // 128)
    magnitude = 2.0 ** torch.randint(-3, 4, (tokens, groups), generator=g).float()
    hidden = torch.randn(tokens, hidden_size, generator=g) * magnitude.repeat_interleave(128, 1)[:, :hidden_size]
    return hidden.to(torch.bfloat16).to(device)


def float_weights(r: Routing, hidden_size, intermediate, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(w13, w2) in float32 with the magnitude of trained weights (std 1/sqrt(fan_in))."""
    g = torch.Generator(device=device).manual_seed(r.seed)
    w13 = torch.randn(r.num_experts, 2 * intermediate, hidden_size, generator=g, device=device) * hidden_size**-0.5
    w2 = torch.randn(r.num_experts, hidden_size, intermediate, generator=g, device=device) * intermediate**-0.5
    return w13, w2


def make_layer(r: Routing, hidden_size, intermediate, device, ids_dtype=torch.int32) -> dict:
    """Arguments of fused_moe_fp8 for routing r."""
    w13, w2 = float_weights(r, hidden_size, intermediate, device)
    (w13, w13_scale), (w2, w2_scale) = es_dual.quantize_fp8_per_block(w13), es_dual.quantize_fp8_per_block(w2)
    g = torch.Generator().manual_seed(r.seed)
    return dict(
        hidden=make_hidden(r.tokens, hidden_size, r.seed, device), w13=w13, w13_scale=w13_scale, w2=w2,
        w2_scale=w2_scale, topk_weights=torch.softmax(torch.randn(r.tokens, r.topk, generator=g), dim=1).to(device),
        topk_ids=topk_ids_of(r, device, ids_dtype),
    )


def reference_of(layer: dict) -> torch.Tensor:
    return fused_moe_fp8_reference(**layer)


def assert_layer_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert not out.isnan().any()
    max_rel, rms_rel = relative_errors(out, ref)
    max_tol, rms_tol = layer_tolerance(out.device)
    assert max_rel <= max_tol and rms_rel <= rms_tol, \
        f"max rel {max_rel:.3g} (tol {max_tol:.3g}), rms rel {rms_rel:.3g} (tol {rms_tol:.3g})"


# ---- routing on the device ----

@pytest.mark.parametrize("route_fn", [route_by_rank, route_by_chunks, route_by_sort])
@given(r=routings(max_tokens=200), invalid=st.booleans(), chunk=st.sampled_from([16, 512]))
@settings(max_examples=EXAMPLES)
def test_route_offsets_and_stable_order(device, route_fn, r, invalid, chunk):
    """Every way of routing (route_kernel's ranks up to ROUTE_BY_RANK_PAIRS pairs, chunks of ROUTE_CHUNK
    pairs above, torch's sort for CPU tensors without the interpreter) gives the offsets and each pair's
    row in the stable order; chunks of 16 pairs give many chunks to small routings."""
    ids = topk_ids_of(r, device, torch.int64)
    if invalid:  # every third pair gets an id out of range; those sort after every expert
        every_third = ids.view(-1)[::3]
        bad = torch.tensor([-1, r.num_experts, 2**40], device=device)
        every_third.copy_(bad.repeat(every_third.numel())[: every_third.numel()])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layer_module, "ROUTE_CHUNK", chunk)
        offsets, pair_rows = route_fn(ids, r.num_experts)
    flat = ids.flatten().tolist()
    valid = [0 <= e < r.num_experts for e in flat]
    expected_offsets = [sum(v and e < x for e, v in zip(flat, valid)) for x in range(r.num_experts + 1)]
    assert offsets.dtype == torch.int32 and offsets.tolist() == expected_offsets
    # stable: pairs of one expert in (token, k) order, then the pairs of no expert, also in order
    expected_order = sorted(range(len(flat)), key=lambda p: (flat[p] if valid[p] else r.num_experts, p))
    expected_rows = [0] * len(flat)
    for row, pair in enumerate(expected_order):
        expected_rows[pair] = row
    assert pair_rows.dtype == torch.int32 and pair_rows.tolist() == expected_rows


@pytest.mark.parametrize("route_fn, pairs", [(route_by_rank, ROUTE_BY_RANK_PAIRS),
                                             (route_by_chunks, 2 * ROUTE_BY_RANK_PAIRS + 24)])
def test_route_at_decode_and_prefill_sizes(device, route_fn, pairs):
    """route_by_rank at ROUTE_BY_RANK_PAIRS pairs and route_by_chunks past it (a partial last chunk) over
    DeepSeek-R1's 256 experts, some ids out of range: torch's stable sort bit for bit."""
    torch.manual_seed(3)
    ids = torch.randint(-2, 258, (pairs // 8, 8), device=device)
    got, want = route_fn(ids, 256), route_by_sort(ids, 256)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_route_picks_by_size(device, monkeypatch):
    """route() ranks up to ROUTE_BY_RANK_PAIRS pairs (while the keys (expert, pair) fit in int32), works in
    chunks above, and sorts with torch when the buckets do not fit a program (or without the interpreter)."""
    calls = []
    for name in ("route_by_rank", "route_by_chunks", "route_by_sort"):
        monkeypatch.setattr(layer_module, name, lambda ids, e, name=name: calls.append((name[9:], ids.numel())))
    for pairs in (1, ROUTE_BY_RANK_PAIRS, ROUTE_BY_RANK_PAIRS + 1):
        layer_module.route(torch.zeros(pairs, 1, dtype=torch.int64, device=device), 4)
    ids = torch.zeros(1024, 1, dtype=torch.int64, device=device)
    layer_module.route(ids, 2**21)  # (E + 1) * pairs > 2**31, 2**22 bins
    monkeypatch.setattr(layer_module, "ROUTE_MAX_BINS", 2**22)
    layer_module.route(ids, 2**21)
    assert calls == [("rank", 1), ("rank", ROUTE_BY_RANK_PAIRS), ("chunks", ROUTE_BY_RANK_PAIRS + 1),
                     ("sort", 1024), ("chunks", 1024)]


# ---- the fused quantizing kernels against es_dual.quantize_fp8_per_token_group ----

def _bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8).cpu()


def _order_of(pair_rows: torch.Tensor) -> torch.Tensor:
    """The pair of each grouped row (the inverse of pair_rows), int64 on the CPU."""
    order = torch.empty(pair_rows.numel(), dtype=torch.int64)
    order[pair_rows.long().cpu()] = torch.arange(pair_rows.numel())
    return order


SENTINEL_BITS, SENTINEL_SCALE = 0x5A, -7.0  # what rows of no expert must keep


@pytest.mark.parametrize("steps", ["kernel", "torch"])
@given(r=routings(), hidden_size=st.sampled_from([16, 128, 144, 400]), extremes=st.booleans(), invalid=st.booleans())
@settings(max_examples=EXAMPLES)
def test_quantize_scatter_bit_equal_to_quantizer(device, steps, r, hidden_size, extremes, invalid):
    """Each token quantized once and stored to its pairs' rows (the Triton kernel; the torch step of CPU
    tensors without the interpreter): row i < offsets[E] is quantize_fp8_per_token_group(hidden[token of
    row i]) bit for bit, and the rows from offsets[E] on (pairs with ids out of range; with `invalid`, -1
    and E and every pair of token 1) keep what was there."""
    if steps == "torch" and device.type != "cpu":
        pytest.skip("the torch steps serve CPU tensors")
    hidden = make_hidden(r.tokens, hidden_size, r.seed, device)
    if extremes and r.tokens:  # an all-zero row (amax floor), huge and tiny groups, one spike (FP8 subnormals)
        hidden[0] = 0
        hidden[-1, :16] = 3e38
        hidden[r.tokens // 2] *= 2.0**-100
        hidden[r.tokens // 2, 1] = 1e4
    ids = topk_ids_of(r, device)
    if invalid:
        ids.view(-1)[::3] = -1
        ids.view(-1)[1::5] = r.num_experts
        ids[1:2] = -1  # a token routed to no expert at all
    offsets, pair_rows = route(ids, r.num_experts)
    rows, groups = ids.numel(), -(-hidden_size // 128)
    a = torch.full((rows, hidden_size), SENTINEL_BITS, dtype=torch.uint8, device=device).view(FP8)
    a_scale = torch.full((rows, groups), SENTINEL_SCALE, device=device)
    if steps == "kernel" and rows:
        step = layer_module._quantize_scatter_step(r.tokens, hidden_size, r.topk, r.num_experts, hidden.device)
        layer_module._run(step, hidden, pair_rows, offsets, layer_module._fp8_target(a), a_scale)
    elif rows:
        layer_module._quantize_scatter_torch(None, lambda: (hidden, pair_rows, offsets, a.view(torch.uint8), a_scale),
                                             topk=r.topk)

    routed = int(offsets[-1])
    tokens_of_rows = (_order_of(pair_rows)[:routed] // r.topk).to(device)
    expected_a, expected_scale = es_dual.quantize_fp8_per_token_group(hidden[tokens_of_rows])
    assert torch.equal(_bits(a[:routed]), _bits(expected_a))
    assert torch.equal(a_scale[:routed].cpu(), expected_scale.cpu())
    assert bool((_bits(a[routed:]) == SENTINEL_BITS).all()) and bool((a_scale[routed:] == SENTINEL_SCALE).all())
    if steps == "kernel":  # the layer's public helper: the same values in new tensors
        got_a, got_scale = quantize_scatter(hidden, pair_rows, offsets, r.topk)
        assert torch.equal(_bits(got_a[:routed]), _bits(a[:routed]))
        assert torch.equal(got_scale[:routed], a_scale[:routed])


@given(r=routings(), hidden_size=st.sampled_from([16, 144, 400]), invalid=st.booleans())
@settings(max_examples=EXAMPLES)
def test_quantize_gather_bit_equal_to_quantizer(device, r, hidden_size, invalid):
    """The quantizer of a first GEMM that gathers its rows: row t of a is quantize_fp8_per_token_group(
    hidden[t]) bit for bit, and row_index[i] is the token of grouped row i for every row of an expert; the
    rows from offsets[E] on (pairs of no expert) keep what was there."""
    hidden = make_hidden(r.tokens, hidden_size, r.seed, device)
    ids = topk_ids_of(r, device)
    if invalid:
        ids.view(-1)[::3] = -1
        ids[1:2] = r.num_experts  # a token routed to no expert at all
    offsets, pair_rows = route(ids, r.num_experts)
    rows, groups = ids.numel(), -(-hidden_size // 128)
    a = torch.full((r.tokens, hidden_size), SENTINEL_BITS, dtype=torch.uint8, device=device).view(FP8)
    a_scale = torch.full((r.tokens, groups), SENTINEL_SCALE, device=device)
    row_index = torch.full((rows,), -5, dtype=torch.int32, device=device)
    if rows:
        step = layer_module._quantize_scatter_step(r.tokens, hidden_size, r.topk, r.num_experts, hidden.device,
                                                   gather=True)  # (a device with its index, as the layer's)
        layer_module._run(step, hidden, pair_rows, offsets, layer_module._fp8_target(a), a_scale, row_index)

    expected_a, expected_scale = es_dual.quantize_fp8_per_token_group(hidden)
    assert torch.equal(_bits(a), _bits(expected_a))
    assert torch.equal(a_scale.cpu(), expected_scale.cpu())
    routed = int(offsets[-1])
    assert torch.equal(row_index[:routed].long().cpu(), _order_of(pair_rows)[:routed] // r.topk)
    assert bool((row_index[routed:] == -5).all())


@given(rows=st.integers(1, 300), intermediate=st.sampled_from([16, 80, 128, 384]), log2_scale=st.integers(-20, 12),
       seed=st.integers(0, 2**31 - 1))
@settings(max_examples=EXAMPLES)
def test_silu_mul_quantize_matches_quantizer(device, rows, intermediate, log2_scale, seed):
    """quantize_fp8_per_token_group(silu(gate) * up in float32), bit for bit but for the exp: the kernel takes
    numpy's (interpreter) or libdevice's expf (GPU), torch its own, and they may differ in the last bit.
    That moves a scale by a float32 ulp or two and, rarely, an FP8 value by one step; anything else (a
    wrong group, a swapped gate and up, a lost factor) differs far more."""
    g = torch.Generator().manual_seed(seed)
    gate_up = (torch.randn(rows, 2 * intermediate, generator=g) * 2.0**log2_scale).to(torch.bfloat16).to(device)
    all_rows = torch.tensor([0, rows], dtype=torch.int32, device=device)  # one expert owns every row
    y, y_scale = silu_mul_quantize(gate_up, all_rows)
    gate, up = gate_up.float().chunk(2, dim=1)
    expected_y, expected_scale = es_dual.quantize_fp8_per_token_group(torch.nn.functional.silu(gate) * up)

    assert torch.allclose(y_scale.cpu(), expected_scale.cpu(), rtol=2.0**-21, atol=0)
    got, want = _bits(y).int(), _bits(expected_y).int()
    differ = got != want
    assert int(differ.sum()) <= max(1, differ.numel() // 1000), f"{int(differ.sum())} of {differ.numel()} values differ"
    same_sign = (got & 0x80) == (want & 0x80)
    one_step = ((got & 0x7F) - (want & 0x7F)).abs() <= 1
    assert bool((same_sign & one_step)[differ].all()), "an FP8 value differs by more than one step"


# ---- the layer against its reference ----

def test_zero_tokens(device):
    layer = make_layer(Routing(0, 4, 2, "uniform", 0), *SHAPES[0], device)
    out = fused_moe_fp8(**layer)
    assert out.shape == (0, SHAPES[0][0]) and out.dtype == torch.bfloat16


@given(r=routings(), shape=st.sampled_from(SHAPES), backend=st.sampled_from(GEMM_BACKENDS),
       ids_dtype=st.sampled_from([torch.int32, torch.int64]))
@settings(max_examples=EXAMPLES)
def test_layer_against_reference(device, r, shape, backend, ids_dtype):
    layer = make_layer(r, *shape, device, ids_dtype)
    assert_layer_close(fused_moe_fp8(**layer, backend=backend), reference_of(layer))


@pytest.mark.parametrize("backend", GEMM_BACKENDS)
@pytest.mark.parametrize("way", ["chunks", "sort"])
def test_layer_routes_large_batches(device, monkeypatch, backend, way):
    """Above ROUTE_BY_RANK_PAIRS (lowered here to take that path) the layer routes in chunks, their counts
    in its buffer, or, for more experts than a program's bins (ROUTE_MAX_BINS lowered), with torch's sort
    into tensors of their own: the same bits as route_by_rank's."""
    layer = make_layer(Routing(40, 6, 3, "hot", seed=4), *SHAPES[0], device, torch.int64)
    by_rank = fused_moe_fp8(**layer, backend=backend)
    monkeypatch.setattr(layer_module, "ROUTE_BY_RANK_PAIRS", 8)
    monkeypatch.setattr(layer_module, "ROUTE_CHUNK", 16)  # several chunks
    if way == "sort":
        monkeypatch.setattr(layer_module, "ROUTE_MAX_BINS", 2)
    monkeypatch.setattr(layer_module, "_PLANS", {})  # plans made under the old limit would keep it
    routed = fused_moe_fp8(**layer, backend=backend)
    (plan,) = layer_module._PLANS.values()
    assert len(plan.route) == (2 if way == "chunks" else 0)
    assert torch.equal(routed, by_rank)
    assert_layer_close(routed, reference_of(layer))


@pytest.mark.parametrize("backend", GEMM_BACKENDS)
def test_first_gemm_gathers_rows_where_its_backend_can(device, monkeypatch, backend):
    """With GATHER_FIRST_GEMM the first GEMM reads each token's one quantized row by index where its backend
    gathers rows (every backend but cutlass_single), and elsewhere the layer keeps the scattered copies:
    the results hold either way, with ids out of range too."""
    monkeypatch.setattr(layer_module, "GATHER_FIRST_GEMM", True)
    monkeypatch.setattr(layer_module, "_PLANS", {})
    tokens = 96 if ON_GPU else 20
    for seed, kind in ((30, "uniform"), (31, "hot"), (32, "subset")):
        layer = make_layer(Routing(tokens, 16, 4, kind, seed), *SHAPES[1], device)
        layer["topk_ids"].view(-1)[::7] = -1
        out = fused_moe_fp8(**layer, backend=backend)
        (plan,) = layer_module._PLANS.values()
        assert plan.gather == (backend != "cutlass_single")
        assert_layer_close(out, reference_of(layer))


def test_decode_sweep_variants_are_layer_plans(device):
    """benchmarks/decode_sweep.py's grouped A/B variants (--gather) are _LayerPlan keywords, each giving the
    bits of the plain plan, so that a GPU visit does not stop at one of them."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_sweep.py"
    spec = importlib.util.spec_from_file_location("decode_sweep", path)
    decode_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(decode_sweep)
    layer = make_layer(Routing(24 if ON_GPU else 12, 8, 2, "uniform", seed=50), *SHAPES[1], device)
    args = [layer[name] for name in ("hidden", "w13", "w13_scale", "w2", "w2_scale", "topk_weights", "topk_ids")]
    sizes = layer_module.check_moe_inputs(*args)
    plain = layer_module._LayerPlan(sizes, torch.int32, "auto", gather=False)(*args)
    for name, keywords in decode_sweep.GATHER_VARIANTS.items():
        assert torch.equal(layer_module._LayerPlan(sizes, torch.int32, "auto", **keywords)(*args), plain), name


@pytest.mark.skipif(ON_GPU, reason="CPU tensors: the layer's torch steps")
@pytest.mark.parametrize("routing", [Routing(13, 5, 3, "hot", seed=8), Routing(30, 8, 2, "subset", seed=9)])
def test_cpu_without_the_interpreter_runs_torch_steps(monkeypatch, routing):
    """Without TRITON_INTERPRET=1, Triton cannot run CPU tensors: the layer's own steps run in torch
    (the GEMMs on the reference backend). Same results as the interpreted kernels (up to the last bit of
    SiLU's exp: numpy's there, torch's here), also for ids out of range and a token naming one expert twice."""
    layer = make_layer(routing, *SHAPES[0], torch.device("cpu"))
    layer["topk_ids"][1, 0] = -3
    layer["topk_ids"][2, 1] = layer["topk_ids"][2, 0]
    interpreted = fused_moe_fp8(**layer)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(layer_module, "_PLANS", {})
    in_torch = fused_moe_fp8(**layer)
    (plan,) = layer_module._PLANS.values()
    assert plan.route == () and isinstance(plan.quantize_scatter, functools.partial)  # the torch steps ran
    max_rel, rms_rel = relative_errors(in_torch, interpreted)
    max_tol, rms_tol = layer_tolerance("cpu")
    assert max_rel <= max_tol and rms_rel <= rms_tol
    assert_layer_close(in_torch, reference_of(layer))
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run this problem"):
        fused_moe_fp8(**layer, backend="triton")


def test_first_expert_takes_a_range_of_the_model(device):
    """Weights of experts 2..4 of a 6-expert model with first_expert=2: the same as the whole model's
    layer with every pair routed outside the range made invalid (bit for bit where the GEMM tiles do
    not depend on the expert count, as on the CPU; within the layer's tolerance everywhere)."""
    layer = make_layer(Routing(20, 6, 3, "uniform", seed=6), *SHAPES[0], device)
    ids = layer["topk_ids"]
    ranged = dict(layer, w13=layer["w13"][2:5], w13_scale=layer["w13_scale"][2:5], w2=layer["w2"][2:5],
                  w2_scale=layer["w2_scale"][2:5])
    outside = dict(layer, topk_ids=torch.where((ids >= 2) & (ids < 5), ids, -1))
    assert_layer_close(fused_moe_fp8(**ranged, first_expert=2), fused_moe_fp8(**outside))
    with pytest.raises(ValueError, match=re.escape("first_expert: expected an int >= 0")):
        fused_moe_fp8(**ranged, first_expert=-1)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_close_to_unquantized_layer(device, shape):
    """End to end against the float64 layer on unquantized activations, by DeepGEMM's similarity
    1 - 2 sum(xy) / sum(x^2 + y^2), which is about half the squared relative RMS error.

    Each e4m3 rounding (3 mantissa bits, to nearest) adds ~2.6% relative RMS error, i.e. ~3.5e-4 to the
    similarity. DeepGEMM's bound 1e-3 is for one GEMM (two roundings: ~7e-4 here too). The layer rounds
    the hidden states and the intermediate, and SiLU(gate) * up carries the error of the hidden states
    twice (through gate and through up): ~9.5e-4 measured against the layer on the same FP8 weights, over
    seeds and shapes. Against the float weights the two weight roundings add ~1.1e-3: ~2.0e-3 measured.
    The bounds leave ~50% margin.
    """
    r = Routing(64, 8, 4, "uniform", seed=5)
    layer = make_layer(r, *shape, device)
    out = fused_moe_fp8(**layer, backend=GEMM_BACKENDS[-1]).double()
    routing = (layer["topk_weights"], layer["topk_ids"])

    def diff(ref):
        return float(1 - 2 * (out * ref).sum() / (out * out + ref * ref).sum())

    fp8_weights = moe_float_reference(layer["hidden"], dequantize_per_block(layer["w13"], layer["w13_scale"]),
                                      dequantize_per_block(layer["w2"], layer["w2_scale"]), *routing)
    assert diff(fp8_weights) < 1.5e-3
    assert diff(moe_float_reference(layer["hidden"], *float_weights(r, *shape, device), *routing)) < 3e-3


# ---- the decode path (backend "auto", at most DECODE_MAX_PAIRS pairs) ----

@given(r=routings(max_tokens=layer_module.DECODE_MAX_PAIRS // 8), shape=st.sampled_from(SHAPES),
       splits=st.sampled_from([None, 1, 2, 3]), ids_dtype=st.sampled_from([torch.int32, torch.int64]),
       invalid=st.booleans(), duplicate=st.booleans(), overlap=st.booleans(), i_chunk=st.sampled_from([32, 128]),
       tensor_cores=st.booleans())
@settings(max_examples=min(EXAMPLES, 30))
def test_decode_path_against_reference(device, r, shape, splits, ids_dtype, invalid, duplicate, overlap, i_chunk,
                                       tensor_cores):
    """The three decode kernels, with the gate_up GEMM split along K into `splits` parts (None: the
    default for the device), the down kernel's I in chunks of i_chunk columns (several chunks: with the
    overlap, the wait sits between a chunk's weights and its y), launched as programmatic dependents or
    not (overlap; on a GPU that has them), gate_up and down on the CUDA cores or the tensor cores, against
    the reference; ids out of range contribute nothing, a token naming one expert twice is two pairs."""
    layer = make_layer(r, *shape, device, ids_dtype)
    ids = layer["topk_ids"]
    if invalid and r.tokens:
        ids[0, 0] = -1
        ids[-1, -1] = r.num_experts
    if duplicate and r.tokens and r.topk > 1:
        ids[::2, 1] = ids[::2, 0]
    config = layer_module.DecodeConfig(overlap_max_pairs=layer_module.DECODE_MAX_PAIRS if overlap else 0,
                                       down_i_chunk=i_chunk, gate_up_tensor_cores=tensor_cores,
                                       down_tensor_cores_from_pairs=0 if tensor_cores else layer_module.DECODE_MAX_PAIRS + 1,
                                       **(dict(gate_up_warps=4, gate_up_stages=3, down_block_n=64, down_mma_warps=4)
                                          if tensor_cores else {}))
    plan = layer_module._DecodePlan(layer_module.check_moe_inputs(**layer), ids_dtype, splits=splits, config=config)
    assert_layer_close(plan(**layer), reference_of(layer))


def test_auto_takes_the_decode_path_up_to_its_limit(device, monkeypatch):
    """backend "auto" (ES_DUAL_BACKEND unset) at 1..DECODE_MAX_PAIRS pairs, at most E / 2 of them or their
    experts' weights at most DECODE_REREAD_BYTES: the decode path, whose result equals the grouped
    pipeline's within the layer's tolerance; more pairs (or pairs sharing the few large experts of a small
    model), a named backend or ES_DUAL_BACKEND: the grouped pipeline."""
    monkeypatch.delenv("ES_DUAL_BACKEND", raising=False)
    limit = layer_module.DECODE_MAX_PAIRS
    experts = 2 * limit
    large = SHAPES[0]
    # a re-read budget of 4 pairs of these experts: 8 pairs on 8 of them take the grouped pipeline, 4 pairs
    # on 4 take the decode path (at the budget), 8 pairs on 8 experts of 16 x 16 too
    monkeypatch.setattr(layer_module, "DECODE_REREAD_BYTES", 4 * 3 * large[0] * large[1])
    monkeypatch.setattr(layer_module, "_PLANS", {})  # plans made under the real budget
    for tokens, num_experts, dims, decode in (
            (1, experts, large, True), (limit // 4, experts, large, True), (limit // 4 + 1, experts, large, False),
            (1, 8, large, True), (2, 8, large, False), (1, 4, large, True), (2, 8, (16, 16), True)):
        layer = make_layer(Routing(tokens, num_experts, 4, "uniform", seed=tokens), *dims, device)
        plan = layer_module._layer_plan(layer_module.check_moe_inputs(**layer), torch.int32, "auto", None)
        assert isinstance(plan, layer_module._DecodePlan) == decode, tokens
        if decode:
            grouped = fused_moe_fp8(**layer, backend=GEMM_BACKENDS[-1])
            max_rel, rms_rel = relative_errors(fused_moe_fp8(**layer), grouped)
            max_tol, rms_tol = layer_tolerance(device)
            assert max_rel <= max_tol and rms_rel <= rms_tol
    shape = layer_module.check_moe_inputs(**make_layer(Routing(1, 8, 4, "uniform", seed=1), *SHAPES[0], device))
    assert not isinstance(layer_module._layer_plan(shape, torch.int32, GEMM_BACKENDS[-1], None), layer_module._DecodePlan)
    assert not isinstance(layer_module._layer_plan(shape, torch.int32, "auto", "triton"), layer_module._DecodePlan)


# ---- documented behaviour of invalid routings ----

@pytest.mark.parametrize("backend", GEMM_BACKENDS)
def test_duplicate_expert_is_two_pairs(device, backend):
    """A token that names one expert twice (invalid input): both pairs are computed and summed, each with
    its weight, which is the token routed once with the sum of the two weights, up to rounding."""
    layer = make_layer(Routing(24, 6, 3, "uniform", seed=11), *SHAPES[0], device)
    ids = layer["topk_ids"]
    ids[::2, 1] = ids[::2, 0]  # every other token names its first expert twice
    out = fused_moe_fp8(**layer, backend=backend)
    assert_layer_close(out, reference_of(layer))

    merged_weights = layer["topk_weights"].clone()
    merged_weights[::2, 0] += merged_weights[::2, 1]
    merged_weights[::2, 1] = 0  # the second slot points to the first expert, with no weight left
    merged = fused_moe_fp8(**dict(layer, topk_weights=merged_weights), backend=backend)
    max_rel, rms_rel = relative_errors(out, merged)
    max_tol, rms_tol = layer_tolerance(out.device)
    assert max_rel <= max_tol and rms_rel <= rms_tol


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("backend", GEMM_BACKENDS)
def test_out_of_range_ids_contribute_nothing(device, backend, ids_dtype):
    num_experts = 5
    layer = make_layer(Routing(20, num_experts, 3, "uniform", seed=3), *SHAPES[-1], device, ids_dtype)
    big = 2**40 if ids_dtype == torch.int64 else 2**31 - 1
    ids = layer["topk_ids"]
    ids[1, 0], ids[2, 2], ids[3, 1] = -1, num_experts, big
    ids[4, :] = torch.tensor([-(2**31), num_experts + 7, -5])  # a token with no valid id gets zeros
    out = fused_moe_fp8(**layer, backend=backend)
    assert torch.equal(out[4].cpu(), torch.zeros(out.shape[1], dtype=torch.bfloat16))
    assert_layer_close(out, reference_of(layer))  # the reference skips those pairs too


def _bad_id(layer):
    layer["topk_ids"][2, 1] = 9


def _repeated_id(layer):
    layer["topk_ids"][3, 1] = layer["topk_ids"][3, 0]


def _nan_scale(layer):
    layer["w2_scale"][1, 0, 0] = float("nan")


@pytest.mark.parametrize("edit, message", [
    (_bad_id, "topk_ids: expected expert ids in [0, 6), got 9 at index (2, 1)"),
    (_repeated_id, "topk_ids: expected distinct experts within a token, got expert"),
    (_nan_scale, "w2_scale: expected finite scales >= 0, got nan at index (1, 0, 0)"),
])
@pytest.mark.parametrize("how", ["keyword", "environment"])
def test_validation_mode_raises(device, monkeypatch, edit, message, how):
    layer = make_layer(Routing(8, 6, 2, "uniform", seed=2), *SHAPES[0], device)
    assert torch.equal(fused_moe_fp8(**layer, validate=True), fused_moe_fp8(**layer))  # valid input passes
    edit(layer)
    kwargs = {"validate": True}
    if how == "environment":
        monkeypatch.setenv("ES_DUAL_VALIDATE", "1")
        kwargs = {}
    with pytest.raises(ValueError, match=re.escape(message)):
        fused_moe_fp8(**layer, **kwargs)


# ---- argument checks ----

def _set(name, value):
    def edit(layer):
        layer[name] = value(layer) if callable(value) else value
    return edit


ARGUMENT_CASES = [  # (id, edit, exception, message fragment); base: T=4, E=3, topk=2, H=128, I=128
    ("hidden_dtype", _set("hidden", lambda l: l["hidden"].float()), TypeError, "hidden: expected dtype torch.bfloat16, got torch.float32"),
    ("w13_dtype", _set("w13", lambda l: l["w13"].to(torch.bfloat16)), TypeError, "w13: expected dtype torch.float8_e4m3fn"),
    ("w2_scale_dtype", _set("w2_scale", lambda l: l["w2_scale"].double()), TypeError, "w2_scale: expected dtype torch.float32"),
    ("weights_dtype", _set("topk_weights", lambda l: l["topk_weights"].half()), TypeError, "topk_weights: expected dtype torch.float32"),
    ("ids_dtype", _set("topk_ids", lambda l: l["topk_ids"].float()), TypeError, "topk_ids: expected dtype torch.int32 or torch.int64"),
    ("ids_not_tensor", _set("topk_ids", [[0, 1]]), TypeError, "topk_ids: expected a torch.Tensor, got list"),
    ("hidden_3d", _set("hidden", lambda l: l["hidden"][None]), ValueError, "hidden: expected 2 dimensions (tokens, hidden)"),
    ("w2_2d", _set("w2", lambda l: l["w2"][0]), ValueError, "w2: expected 3 dimensions"),
    ("hidden_size", _set("hidden", lambda l: l["hidden"][:, :112].contiguous()), ValueError, "w13: expected shape (3, 256, 112)"),
    ("hidden_size_16", _set("hidden", lambda l: l["hidden"][:, :120].contiguous()), ValueError, "hidden: expected a hidden size that is a positive multiple of 16"),
    ("odd_intermediate", _set("w13", lambda l: l["w13"][:, :200].contiguous()), ValueError, "w13: expected shape (num_experts >= 1, 2 * intermediate, 128)"),
    ("w13_scale_shape", _set("w13_scale", lambda l: l["w13_scale"][:, :1].contiguous()), ValueError, "w13_scale: expected shape (3, 2, 1)"),
    ("w2_shape", _set("w2", lambda l: l["w2"][:, :, :64].contiguous()), ValueError, "w2: expected shape (3, 128, 128)"),
    ("w2_scale_shape", _set("w2_scale", lambda l: l["w2_scale"][:2].contiguous()), ValueError, "w2_scale: expected shape (3, 1, 1)"),
    ("ids_tokens", _set("topk_ids", lambda l: l["topk_ids"][:3].contiguous()), ValueError, "topk_ids: expected shape (4, topk)"),
    ("weights_shape", _set("topk_weights", lambda l: l["topk_weights"][:, :1].contiguous()), ValueError, "topk_weights: expected shape (4, 2)"),
    ("ids_non_contiguous", _set("topk_ids", lambda l: l["topk_ids"].t().contiguous().t()), ValueError, "topk_ids: expected a contiguous"),
    ("w13_misaligned", _set("w13", lambda l: torch.empty(l["w13"].numel() + 1, dtype=FP8, device=l["w13"].device)[1:].view(l["w13"].shape)),
     ValueError, "w13: expected a data pointer aligned to 16 bytes"),
    ("backend", None, ValueError, "backend: expected one of 'auto'"),
]


@pytest.mark.parametrize("case", ARGUMENT_CASES, ids=[c[0] for c in ARGUMENT_CASES])
def test_argument_errors_name_the_argument(device, case):
    _, edit, exception, message = case
    layer = make_layer(Routing(4, 3, 2, "uniform", seed=1), 128, 128, device)
    kwargs = {"backend": "fastest"} if edit is None else {}
    if edit is not None:
        edit(layer)
    with pytest.raises(exception, match=re.escape(message)):
        fused_moe_fp8(**layer, **kwargs)


def test_device_mismatch_names_the_argument():
    if not ON_GPU:
        pytest.skip("needs a second device type")
    layer = make_layer(Routing(4, 3, 2, "uniform", seed=1), 128, 128, torch.device("cuda"))
    layer["topk_weights"] = layer["topk_weights"].cpu()
    with pytest.raises(ValueError, match=re.escape("topk_weights: expected a tensor on cuda")):
        fused_moe_fp8(**layer)


# ---- GPU: no host sync, CUDA graphs ----

# every GEMM backend through the grouped pipeline at 96 tokens, and "auto" at 4 tokens of 64 experts: the decode path
GPU_PATHS = [(b, False) for b in GEMM_BACKENDS] + [("auto", True)]


def _layer_for_path(decode, seed, kind="uniform"):
    routing, shape = (Routing(4, 64, 8, kind, seed), SHAPES[0]) if decode else (Routing(96, 32, 8, kind, seed), SHAPES[1])
    layer = make_layer(routing, *shape, torch.device("cuda"))
    plan = layer_module._layer_plan(layer_module.check_moe_inputs(**layer), torch.int32, "auto", None)
    assert isinstance(plan, layer_module._DecodePlan) == decode
    return layer


@needs_gpu
@pytest.mark.parametrize("backend, decode, gather", [(b, d, False) for b, d in GPU_PATHS] + [("cutlass", False, True)])
def test_no_host_sync(monkeypatch, backend, decode, gather):
    """No call synchronizes with the host, also with the first GEMM gathering its rows."""
    if gather and "cutlass" not in GEMM_BACKENDS:
        pytest.skip("the CUTLASS library is not available here")
    monkeypatch.setattr(layer_module, "GATHER_FIRST_GEMM", gather)
    monkeypatch.setattr(layer_module, "_PLANS", {})
    layer = _layer_for_path(decode, seed=4, kind="subset")
    fused_moe_fp8(**layer, backend=backend)  # compile and load first
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused_moe_fp8(**layer, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_gpu
@pytest.mark.parametrize("backend, decode, gather", [(b, d, False) for b, d in GPU_PATHS] + [("cutlass", False, True)])
def test_cuda_graph_replay_follows_new_routing(monkeypatch, backend, decode, gather):
    """Capture once, then change hidden, topk_ids and topk_weights in place: each replay matches the
    reference of the new inputs (the per-expert counts live on the device only; with `gather`, the first
    GEMM reads gathered rows, by a row index rebuilt on the device by every call)."""
    if gather and "cutlass" not in GEMM_BACKENDS:
        pytest.skip("the CUTLASS library is not available here")
    monkeypatch.setattr(layer_module, "GATHER_FIRST_GEMM", gather)
    monkeypatch.setattr(layer_module, "_PLANS", {})
    static = _layer_for_path(decode, seed=20)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fused_moe_fp8(**static, backend=backend)
    torch.cuda.current_stream().wait_stream(stream)
    if gather:
        assert layer_module._layer_plan(layer_module.check_moe_inputs(**static), torch.int32, backend, None).gather
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe_fp8(**static, backend=backend)
    for seed, kind in ((21, "hot"), (22, "subset"), (23, "uniform")):
        new = _layer_for_path(decode, seed, kind)
        for name in ("hidden", "topk_ids", "topk_weights"):
            static[name].copy_(new[name])
        graph.replay()
        torch.cuda.synchronize()
        assert_layer_close(out, reference_of(static))


# ---- the layer benchmark ----

def _emulated_scaled_grouped_mm(a, b, scale_a, scale_b, offs=None, out_dtype=torch.bfloat16):
    """torch._scaled_grouped_mm's 2d x 3d case in plain torch: group g is rows offs[g-1]:offs[g] of a."""
    out = torch.empty(a.shape[0], b.shape[2], dtype=out_dtype, device=a.device)
    start = 0
    for g, end in enumerate(offs.tolist()):
        out[start:end] = ((a[start:end].float() * scale_a[start:end, None]) @ (b[g].float() * scale_b[g])).to(out_dtype)
        start = end
    return out


def test_bench_scaled_grouped_mm_pipeline(monkeypatch):
    """The torch._scaled_grouped_mm pipeline of the benchmark (its layouts, offsets and un-permutation),
    run here with the op emulated: within the benchmark's tolerance of the layer reference."""
    from es_dual.bench import layer as bench

    monkeypatch.setattr(torch, "_scaled_grouped_mm", _emulated_scaled_grouped_mm)
    model = bench.LayerModel("small", num_experts=6, topk=3, hidden=256, intermediate=128)
    weights = bench.make_weights(model, torch.device("cpu"))
    hidden, topk_weights, topk_ids = bench.make_batch(model, 40, torch.device("cpu"))
    (w13, w13_rs), (w2, w2_rs) = bench._rowwise_weights(*weights[:2]), bench._rowwise_weights(*weights[2:])
    out = bench.scaled_grouped_mm_moe(hidden, w13, w13_rs, w2, w2_rs, topk_weights, topk_ids)
    max_rel, rms_rel = relative_errors(out, fused_moe_fp8_reference(hidden, *weights, topk_weights, topk_ids))
    assert max_rel <= bench.COARSE_TOL[0] and rms_rel <= bench.COARSE_TOL[1]


def test_bench_kernel_breakdown():
    """The profiler's per-call kernel list: on a GPU, the layer's kernels with their launches per call
    (the decode path at one token: three); on the CPU nothing runs on a device, so the list is empty."""
    from es_dual.bench.layer import kernel_breakdown

    layer = make_layer(Routing(1, 8, 4, "uniform", seed=2), *SHAPES[0], torch.device("cuda" if ON_GPU else "cpu"))
    kernels = kernel_breakdown(lambda: fused_moe_fp8(**layer), calls=3)
    if ON_GPU:
        assert [name for name, _, _ in kernels if "decode" in name] and all(us > 0 for _, _, us in kernels)
        assert sum(per_call for name, per_call, _ in kernels if "decode" in name) == 3
    else:
        assert kernels == []


def test_bench_layer_quick(tmp_path):
    from es_dual.bench.layer import COLUMNS, run_layer

    csv_path = tmp_path / "layer.csv"
    argv = ["--layer", "--quick", "--csv", str(csv_path)]
    if ON_GPU:
        argv += ["--models", "qwen3_235b_tp4", "--batches", "1,64"]
    rows = run_layer(argv)
    assert {r["provider"] for r in rows} >= {f"es_dual_{b}" for b in GEMM_BACKENDS}
    for r in rows:
        assert r["status"] == "ok" or r["status"].startswith("unavailable:"), r
        assert r["status"] != "ok" or (r["us"] > 0 and r["floor_us"] > 0 and r["pct_floor"] > 0)
    assert {r["mode"] for r in rows} == ({"kernel", "eager"} if ON_GPU else {"eager"})
    assert csv_path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert len(csv_path.read_text().splitlines()) == len(rows) + 1

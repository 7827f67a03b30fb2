"""Every refusal names the argument, says what was expected, and leaves out untouched."""
import re

import pytest
import torch

import es_dual
from es_dual.dispatch import available_backends
from support import make_inputs, needs_gpu, needs_interpreter

FP8 = torch.float8_e4m3fn


def _base(device="cpu", exact=False):
    inputs = make_inputs([3, 0, 2], 48, 160, seed=0, device=device, exact=exact)
    inputs["out"] = torch.full((5, 48), 7.0, dtype=torch.bfloat16, device=device)
    return inputs


def _replace(name, value):
    def edit(inputs):
        inputs[name] = value(inputs) if callable(value) else value
    return edit


def _non_contiguous(name):
    def edit(inputs):
        t = inputs[name]
        inputs[name] = torch.stack([t, t], dim=-1)[..., 0]  # same shape, doubled inner stride
    return edit


def _misaligned(name):
    def edit(inputs):
        t = inputs[name]
        flat = torch.empty(t.numel() + 1, dtype=t.dtype)
        inputs[name] = flat[1:].view(t.shape)
    return edit


CASES = [  # (id, edit, exception, message fragment)
    ("a_dtype", _replace("a", lambda i: i["a"].float()), TypeError, "a: expected dtype torch.float8_e4m3fn"),
    ("b_dtype", _replace("b", lambda i: i["b"].to(torch.bfloat16)), TypeError, "b: expected dtype torch.float8_e4m3fn"),
    ("a_scale_dtype", _replace("a_scale", lambda i: i["a_scale"].double()), TypeError, "a_scale: expected dtype torch.float32"),
    ("b_scale_dtype", _replace("b_scale", lambda i: i["b_scale"].half()), TypeError, "b_scale: expected dtype torch.float32"),
    ("offsets_dtype", _replace("expert_offsets", lambda i: i["expert_offsets"].float()), TypeError, "expert_offsets: expected dtype torch.int32 or torch.int64"),
    ("out_dtype_tensor", _replace("out", lambda i: i["out"].float()), TypeError, "out: expected dtype torch.bfloat16 or torch.float16"),
    ("a_not_tensor", _replace("a", [[1.0]]), TypeError, "a: expected a torch.Tensor"),
    ("a_3d", _replace("a", lambda i: i["a"][None]), ValueError, "a: expected 2 dimensions"),
    ("b_2d", _replace("b", lambda i: i["b"][0]), ValueError, "b: expected 3 dimensions"),
    ("k_mismatch", _replace("a", lambda i: i["a"][:, :144].contiguous()), ValueError, "b: expected k = 144"),
    ("a_scale_shape", _replace("a_scale", lambda i: i["a_scale"][:, :1].contiguous()), ValueError, "a_scale: expected shape (5, 2)"),
    ("b_scale_shape", _replace("b_scale", lambda i: i["b_scale"][:2].contiguous()), ValueError, "b_scale: expected shape (3, 1, 2)"),
    ("offsets_length", _replace("expert_offsets", lambda i: i["expert_offsets"][:3].contiguous()), ValueError, "expert_offsets: expected shape (4,)"),
    ("offsets_2d", _replace("expert_offsets", lambda i: i["expert_offsets"][None]), ValueError, "expert_offsets: expected shape (4,)"),
    ("out_shape", _replace("out", lambda i: torch.zeros(5, 64, dtype=torch.bfloat16)), ValueError, "out: expected shape (5, 48)"),
    ("a_non_contiguous", _non_contiguous("a"), ValueError, "a: expected a contiguous"),
    ("b_non_contiguous", _non_contiguous("b"), ValueError, "b: expected a contiguous"),
    ("a_scale_non_contiguous", _non_contiguous("a_scale"), ValueError, "a_scale: expected a contiguous"),
    ("out_non_contiguous", _non_contiguous("out"), ValueError, "out: expected a contiguous"),
    ("a_misaligned", _misaligned("a"), ValueError, "a: expected a data pointer aligned to 16 bytes"),
    ("b_misaligned", _misaligned("b"), ValueError, "b: expected a data pointer aligned to 16 bytes"),
    ("out_overlaps_a", _replace("out", lambda i: i["a"].view(-1)[: 5 * 48 * 2].view(torch.bfloat16).view(5, 48)), ValueError, "out: expected memory disjoint from the inputs, but it overlaps a"),
    ("no_experts", lambda i: i.update(b=torch.zeros(0, 48, 160, dtype=FP8), b_scale=torch.zeros(0, 1, 2), expert_offsets=torch.zeros(1, dtype=torch.int32)), ValueError, "b: expected at least one expert"),
    ("n_not_16", lambda i: i.update(b=torch.zeros(3, 40, 160, dtype=FP8), out=torch.zeros(5, 40, dtype=torch.bfloat16)), ValueError, "b: expected n to be a positive multiple of 16, got n = 40"),
    ("k_not_16", lambda i: i.update(a=torch.zeros(5, 152, dtype=FP8), b=torch.zeros(3, 48, 152, dtype=FP8)), ValueError, "b: expected k to be a positive multiple of 16, got k = 152"),
]


@pytest.mark.parametrize("edit,exc,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", ["reference", "triton", "auto"])
def test_bad_input_is_refused_clearly(edit, exc, message, backend):
    inputs = _base()
    edit(inputs)
    out = inputs["out"]
    before = out.clone() if isinstance(out, torch.Tensor) else None
    with pytest.raises(exc, match=re.escape(message)):
        es_dual.grouped_gemm_fp8(**inputs, backend=backend)
    if before is not None and out.dtype == before.dtype:
        assert torch.equal(out, before), "a refused call wrote into out"


def test_out_dtype_argument_checked():
    inputs = _base()
    del inputs["out"]
    with pytest.raises(TypeError, match="out_dtype: expected torch.bfloat16 or torch.float16, got torch.float32"):
        es_dual.grouped_gemm_fp8(**inputs, out_dtype=torch.float32)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend: expected one of 'auto', 'cutlass'"):
        es_dual.grouped_gemm_fp8(**_base(), backend="cublas")


def test_out_given_decides_dtype():
    inputs = _base()
    inputs["out"] = torch.zeros(5, 48, dtype=torch.float16)
    assert es_dual.grouped_gemm_fp8(**inputs, out_dtype=torch.bfloat16).dtype == torch.float16


@needs_gpu
@pytest.mark.parametrize("moved", ["b", "expert_offsets", "out"])
def test_tensors_on_different_devices(moved):
    inputs = {name: t.cuda() for name, t in _base().items()}
    inputs[moved] = inputs[moved].cpu()
    before = inputs["out"].clone()
    with pytest.raises(ValueError, match=rf"{moved}: expected a tensor on cuda:0 \(the device of a\), got one on cpu"):
        es_dual.grouped_gemm_fp8(**inputs)
    assert torch.equal(inputs["out"].cpu(), before.cpu())


# --- contents: checked only on request, otherwise the documented behaviour --------------------------------

CONTENT_CASES = [  # (id, edit, message of the validation mode)
    ("offsets_decrease", lambda i: i["expert_offsets"].copy_(torch.tensor([0, 4, 2, 5])),
     "expert_offsets: expected non-decreasing offsets, got offsets[1] = 4 > offsets[2] = 2"),
    ("offsets_end_short", lambda i: i["expert_offsets"].copy_(torch.tensor([0, 3, 3, 4])),
     "expert_offsets: expected offsets[-1] == total_m == 5, got 4"),
    ("offsets_start_late", lambda i: i["expert_offsets"].copy_(torch.tensor([1, 3, 3, 5])),
     "expert_offsets: expected offsets[0] == 0, got 1"),
    ("negative_scale", lambda i: i["a_scale"].__setitem__((2, 1), -1.0), "a_scale: expected finite scales >= 0, got -1.0 at index (2, 1)"),
    ("nan_scale", lambda i: i["b_scale"].__setitem__((1, 0, 0), float("nan")), "b_scale: expected finite scales >= 0, got nan at index (1, 0, 0)"),
]


@pytest.mark.parametrize("edit,message", [c[1:] for c in CONTENT_CASES], ids=[c[0] for c in CONTENT_CASES])
def test_validation_mode_names_the_bad_content(edit, message, monkeypatch):
    inputs = _base()
    edit(inputs)
    before = inputs["out"].clone()
    with pytest.raises(ValueError, match=re.escape(message)):
        es_dual.grouped_gemm_fp8(**inputs, validate=True)
    monkeypatch.setenv("ES_DUAL_VALIDATE", "1")
    with pytest.raises(ValueError, match=re.escape(message)):
        es_dual.grouped_gemm_fp8(**inputs)
    assert torch.equal(inputs["out"], before)


def test_validation_mode_accepts_valid_contents():
    inputs = _base()
    assert es_dual.grouped_gemm_fp8(**inputs, validate=True) is inputs["out"]


# every backend that runs here: the reference and the interpreter on a CPU machine, all four on a Hopper GPU
HERE = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


@pytest.mark.parametrize("offsets", [[0, 4, 2, 5], [0, 3, 3, 4], [2, 3, 3, 5], [-3, 2, 9, 5], [0, 9, 9, 9]])
@pytest.mark.parametrize("backend", available_backends(HERE))
def test_offsets_that_break_the_contract_are_clamped(offsets, backend):
    """Documented: offsets clamped to [0, total_m]; an expert ending before its start has no rows; each
    element of a row claimed by two experts (decreasing offsets) holds one of their results; rows of no
    expert keep what out held. Checked against each expert computed alone on its clamped rows, with
    exactly representable inputs so that every backend's result is bit-equal to the reference's."""
    inputs = _base(HERE, exact=True)
    inputs["expert_offsets"].copy_(torch.tensor(offsets))
    inputs["out"].fill_(float("nan"))
    es_dual.grouped_gemm_fp8(**inputs, backend=backend)
    total_m = inputs["a"].shape[0]
    candidates = [[] for _ in range(total_m)]  # every expert's result for each row it claims
    for e in range(3):
        lo = min(max(offsets[e], 0), total_m)
        hi = min(max(offsets[e + 1], lo), total_m)
        if hi > lo:
            alone = es_dual.grouped_gemm_fp8(
                inputs["a"][lo:hi], inputs["a_scale"][lo:hi], inputs["b"][e : e + 1], inputs["b_scale"][e : e + 1],
                torch.tensor([0, hi - lo], dtype=torch.int32, device=HERE), backend="reference")
            for r in range(lo, hi):
                candidates[r].append(alone[r - lo])
    for r, results in enumerate(candidates):
        if results:
            matches = torch.stack([inputs["out"][r] == c for c in results]).any(dim=0)
            assert matches.all(), f"row {r}: elements that match no claiming expert's result"
        else:
            assert inputs["out"][r].isnan().all(), f"row {r} belongs to no expert but was written"

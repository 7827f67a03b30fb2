import dataclasses

import pytest
import torch

import es_dual
from es_dual.dispatch import BACKENDS, available_backends, select_backend
from es_dual.problem import Problem
from support import needs_gpu, needs_interpreter


def _problem(device="cpu", n=256, k=512, out_dtype=torch.bfloat16):
    return Problem(total_m=10, n=n, k=k, num_experts=2, out_dtype=out_dtype, device=torch.device(device))


def test_auto_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv("ES_DUAL_BACKEND", raising=False)
    assert select_backend(_problem(), "auto").name == "reference"


@needs_interpreter
def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv("ES_DUAL_BACKEND", "triton")
    assert select_backend(_problem(), "auto").name == "triton"  # TRITON_INTERPRET=1 in this CPU test run
    monkeypatch.setenv("ES_DUAL_BACKEND", "reference")
    assert select_backend(_problem(), "auto").name == "reference"
    assert select_backend(_problem(), "triton").name == "triton"  # an explicit choice wins over the variable


def test_environment_with_unknown_backend(monkeypatch):
    monkeypatch.setenv("ES_DUAL_BACKEND", "cublas")
    with pytest.raises(ValueError, match="backend: expected one of 'auto', 'cutlass'.*got 'cublas'"):
        select_backend(_problem(), "auto")


@pytest.mark.parametrize("name", ["cutlass", "cutlass_single"])
def test_cutlass_refuses_cpu_tensors_with_reasons(name):
    with pytest.raises(RuntimeError, match=f"backend '{name}' cannot run this problem: runs on cuda tensors, not cpu"):
        select_backend(_problem(), name)


def test_triton_on_cpu_without_interpreter_says_how(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1"):
        select_backend(_problem(), "triton")


def test_reasons_are_listed_per_constraint():
    reasons = BACKENDS["cutlass"].not_supported_reasons(_problem(device="cpu", out_dtype=torch.float32))
    assert reasons == ["runs on cuda tensors, not cpu", "does not write torch.float32"]
    assert BACKENDS["reference"].not_supported_reasons(_problem(n=48, k=144)) == []


@needs_interpreter
def test_available_backends_on_cpu():
    assert available_backends("cpu") == ["triton", "reference"]  # TRITON_INTERPRET=1 in the CPU test run


def test_every_backend_explains_itself():
    for backend in BACKENDS.values():
        assert backend.description and backend.device_types


@needs_gpu
def test_auto_on_this_gpu_prefers_cutlass_on_hopper_only(monkeypatch):
    monkeypatch.delenv("ES_DUAL_BACKEND", raising=False)
    device = torch.device("cuda", torch.cuda.current_device())
    expected = "cutlass" if torch.cuda.get_device_capability(device) == (9, 0) else "triton"
    assert select_backend(_problem(device), "auto").name == expected
    assert ("cutlass" in available_backends(device)) == (expected == "cutlass")
    # without a usable CUTLASS library, auto falls back to Triton
    from es_dual import dispatch

    broken = dataclasses.replace(BACKENDS["cutlass"], availability=lambda device: ["library missing"])
    monkeypatch.setitem(dispatch.BACKENDS, "cutlass", broken)
    assert select_backend(_problem(device), "auto").name == "triton"


@needs_gpu
def test_no_backend_can_run_lists_every_reason(monkeypatch):
    monkeypatch.delenv("ES_DUAL_BACKEND", raising=False)
    from es_dual import dispatch

    monkeypatch.setitem(dispatch.AUTO_ORDER, "cuda", ())
    with pytest.raises(RuntimeError) as info:
        select_backend(_problem("cuda"), "auto")
    for name in BACKENDS:
        assert f"  {name}: " in str(info.value)

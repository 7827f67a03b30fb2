import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU the Triton kernel runs under the interpreter; the variable must be set before the kernel
# module is imported (Triton reads it when it decorates the kernel).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=100, **_common)  # CPU interpreter: small shapes, CI budget
settings.register_profile("gpu", max_examples=200, **_common)
settings.register_profile("dev", max_examples=20, **_common)
settings.register_profile("fuzz", max_examples=5000, **_common)  # tests/test_reliability.py on a GPU
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpu" if torch.cuda.is_available() else "ci"))


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

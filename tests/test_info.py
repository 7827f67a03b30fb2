import subprocess
import sys

import torch

from es_dual.dispatch import BACKENDS
from es_dual.info import report


def test_report_names_every_backend_and_the_cache():
    text = report()
    assert f"torch {torch.__version__}" in text
    for name in BACKENDS:
        assert f"cpu  {name}" in text
    assert "cpu  reference       available" in text
    assert "CUTLASS build cache:" in text and "can build here:" in text


def test_module_runs():
    out = subprocess.run([sys.executable, "-m", "es_dual.info"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("es_dual ")

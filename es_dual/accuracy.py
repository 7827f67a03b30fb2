"""How far an output is from a reference: the two numbers every comparison in es_dual reports."""
from __future__ import annotations

import torch

# Unit roundoff of the output dtypes: rounding to nearest moves a value by at most u * |value|.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def relative_errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |out - ref| / max |ref|, ||out - ref|| / ||ref||), computed in float64; NaN anywhere gives NaN."""
    out, ref = out.double(), ref.double().to(out.device)
    if ref.numel() == 0:
        return 0.0, 0.0
    err = out - ref
    tiny = torch.finfo(torch.float64).tiny
    max_rel = (err.abs().max() / ref.abs().max().clamp(min=tiny)).item()
    rms_rel = (err.norm() / ref.norm().clamp(min=tiny)).item()
    if out.isnan().any() or ref.isnan().any():
        return float("nan"), float("nan")
    return max_rel, rms_rel


def tolerance(dtype: torch.dtype, both_rounded: bool = False) -> tuple[float, float]:
    """Allowed (max, rms) relative error of a float32-accumulating kernel whose output is rounded to dtype.

    Against an unrounded (float64) reference, rounding costs at most u per element; a different
    summation order may land on the other neighbour, hence 2u for the max. The RMS of uniform rounding
    error is at most u * 2/sqrt(12); u leaves a margin. When the reference is rounded to dtype too
    (both_rounded), the two roundings add up: twice each bound.
    """
    u = UNIT_ROUNDOFF[dtype]
    factor = 2.0 if both_rounded else 1.0
    return 2 * u * factor, u * factor

"""Properties of CUDA devices, read once per device: the bottom of the package (imports only torch), so
that the dispatcher and the launchers above it can all read them without importing each other."""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def device_properties(device: torch.device):
    """torch's properties of a CUDA device, read once per device (the backends read capability and SM
    count on every call: a query each time would be host overhead)."""
    return torch.cuda.get_device_properties(device)


def device_capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of the tensors' own device (never device 0 by default)."""
    props = device_properties(device)
    return props.major, props.minor

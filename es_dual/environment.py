"""Environment variables read on every call (ES_DUAL_VALIDATE, ES_DUAL_BACKEND), read cheaply.

``os.environ.get`` of a name that is not set raises and catches a KeyError inside: about 1 µs on the
H200 machine's host, twice per call. ``os.environ`` keeps its contents, updated on every assignment,
in the mapping ``_data`` under encoded names; a lookup there costs a tenth of that. Where a Python
lacks it, ``os.environ.get`` is used.
"""
from __future__ import annotations

import functools
import os

_DATA = getattr(os.environ, "_data", None)
_ENCODE_KEY = getattr(os.environ, "encodekey", None)
_DECODE_VALUE = getattr(os.environ, "decodevalue", None)


@functools.lru_cache(maxsize=None)
def _encoded(name: str):
    return _ENCODE_KEY(name)


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``, as it is now (assignments made after import are seen)."""
    if _DATA is None or _ENCODE_KEY is None or _DECODE_VALUE is None:
        return os.environ.get(name)
    value = _DATA.get(_encoded(name))
    return None if value is None else _DECODE_VALUE(value)

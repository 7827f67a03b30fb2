"""Load ``libes_dual.so`` with ctypes (once per process) and declare its C signatures (csrc/es_dual.h)."""
from __future__ import annotations

import ctypes
import json
import threading

from . import build

_c = ctypes
# name -> (restype, argtypes), in the order of csrc/es_dual.h
SIGNATURES = {
    "es_dual_workspace_bytes": (
        _c.c_int,
        [_c.c_int64, _c.c_int64, _c.c_int64, _c.c_int32, _c.c_int32, _c.c_int32, _c.c_int32,
         _c.POINTER(_c.c_size_t)],
    ),
    "es_dual_grouped_gemm": (
        _c.c_int,
        [
            _c.c_void_p, _c.c_void_p, _c.c_int64, _c.c_void_p,  # a, a_scale, a_scale_ld, row_index
            _c.c_void_p, _c.c_void_p,  # b, b_scale
            _c.c_void_p, _c.c_int32, _c.c_int64, _c.c_void_p,  # expert_offsets, offsets_int64, max_m, out
            _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int32,  # total_m, n, k, num_experts
            _c.c_int32, _c.c_int32, _c.c_int32,  # out_dtype, mode, overlap
            _c.c_int32, _c.c_int32,  # device, sm_count
            _c.c_void_p, _c.c_size_t, _c.c_void_p,  # workspace, workspace_bytes, stream
        ],
    ),
    "es_dual_last_error": (_c.c_char_p, []),
    "es_dual_version": (_c.c_char_p, []),
    "es_dual_table_json": (_c.c_char_p, []),
}

# Status codes (csrc/es_dual.h)
OK, INVALID_ARGUMENT, WORKSPACE, CUDA, CUTLASS = range(5)
OUT_DTYPE_CODES = {"bfloat16": 0, "float16": 1}  # torch dtype name -> out_dtype argument

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_modes: dict[str, int] | None = None


def load_library(build_if_missing: bool = True) -> ctypes.CDLL:
    """The loaded library; locate (or build, see ``build.library_path``) and load it on first use."""
    global _lib, _modes
    if _lib is None:
        with _lock:
            if _lib is None:
                lib = ctypes.CDLL(str(build.library_path(build=build_if_missing)))
                for name, (restype, argtypes) in SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.restype, fn.argtypes = restype, argtypes
                _modes = mode_codes(lib)
                _lib = lib
    return _lib


def mode_codes(lib: ctypes.CDLL) -> dict[str, int]:
    """Mode name -> mode argument, in the order the library reports its table (a tuning build has more
    modes than the production one, so the order is the library's, not a constant here)."""
    return {m["mode"]: i for i, m in enumerate(json.loads(lib.es_dual_table_json()))}


def modes() -> dict[str, int]:
    """``mode_codes`` of the loaded library (loading it if needed)."""
    load_library()
    return _modes


def last_error(lib: ctypes.CDLL) -> str:
    return (lib.es_dual_last_error() or b"").decode(errors="replace")

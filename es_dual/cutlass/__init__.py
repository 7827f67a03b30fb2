"""CUTLASS SM90 backend: bucket table, build of csrc/, ctypes loader, launcher. torch is imported lazily."""
from .build import library_path
from .launch import grouped_gemm_cutlass, library_reasons
from .loader import load_library

__all__ = ["grouped_gemm_cutlass", "library_path", "library_reasons", "load_library"]

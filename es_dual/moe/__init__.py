"""The fused FP8 MoE expert block built on es_dual's grouped GEMM, and its plain torch references."""
from .layer import fused_moe_fp8
from .reference import fused_moe_fp8_reference, moe_float_reference

__all__ = ["fused_moe_fp8", "fused_moe_fp8_reference", "moe_float_reference"]

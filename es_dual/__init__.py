"""es_dual: FP8 blockwise-scaled grouped GEMMs for Mixture-of-Experts."""
from .api import grouped_gemm_fp8, grouped_gemm_fp8_masked
from .dispatch import available_backends
from .moe import fused_moe_fp8, fused_moe_fp8_reference
from .quant import quantize_fp8_per_block, quantize_fp8_per_token_group
from .reference import grouped_gemm_fp8_masked_reference, grouped_gemm_fp8_reference

__version__ = "0.1.0"
__all__ = [
    "available_backends",
    "fused_moe_fp8",
    "fused_moe_fp8_reference",
    "grouped_gemm_fp8",
    "grouped_gemm_fp8_masked",
    "grouped_gemm_fp8_masked_reference",
    "grouped_gemm_fp8_reference",
    "quantize_fp8_per_block",
    "quantize_fp8_per_token_group",
]

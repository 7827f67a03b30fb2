"""Call-compatible entry points of other kernels' APIs, forwarding to es_dual (es_dual.compat.sgl_kernel)."""

"""What the CUTLASS backend supports, as data the dispatcher reads (es_dual/dispatch.py)."""

REQUIRED_CAPABILITY = (9, 0)  # the library holds sm_90a code only (wgmma, TMA multicast, setmaxnreg)
# The tensor contract's own multiples. Tails of the 128-wide scale blocks are handled by the mainloop
# (TMA zero-fills A/B, scale loads are predicated): tests/test_cutlass_gpu.py::test_tails, H200, 2026-11-28.
N_MULTIPLE = 16
K_MULTIPLE = 16

"""The one table of the CUTLASS backend: kernel configurations and the expert-specialization buckets.

Everything else reads this file: ``generate.py`` writes one C++ translation unit per (kernel config x
output dtype) and the routing table the device preparation kernel uses; the tests read the bucket
boundaries from here. Nothing in ``csrc/`` repeats a number that lives here.

``MODES`` are the production tables (mode 0 "es", mode 1 "single"); ``TUNING_MODES`` are candidates
compiled only into a tuning build (``ES_DUAL_TUNING=1``, see generate.py) and compared by
``benchmarks/cutlass_tables.py``; ``DEFAULT_OVERLAP`` is how the bucket kernels of a call are enqueued.

An expert with ``m`` tokens (``m > 0``) goes to the first bucket whose ``max_tokens`` is >= m (the
last bucket has ``max_tokens=None``: no upper bound). Experts with no tokens go nowhere.

Swap-AB (``swap_ab=True``) computes ``out_e^T = B_e @ A_e^T``: the expert's weights (n x k) become
CUTLASS's A operand and its tokens CUTLASS's B operand, so a decode-sized expert (a handful of tokens)
fills the small N side of the tile instead of wasting most of a 128-row M side. The output is then
n x m column-major, which is ``out`` row-major, so no transpose is written.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("cooperative", "pingpong")
SCALE_BLOCK = 128  # K (and weight-N) elements per scale: fixed by the tensor contract


class _Checked:
    """A configuration that refuses to exist when its invalid_reasons() lists anything."""

    def __post_init__(self):
        reasons = self.invalid_reasons()
        if reasons:
            raise ValueError(f"invalid {type(self).__name__} {self}: " + "; ".join(reasons))


@dataclass(frozen=True)
class KernelConfig(_Checked):
    """One CUTLASS SM90 FP8 blockwise grouped GEMM instantiation (one translation unit per out dtype)."""

    tile_m: int
    tile_n: int
    tile_k: int
    cluster_m: int
    cluster_n: int
    schedule: str
    swap_ab: bool

    def invalid_reasons(self) -> list[str]:
        """Every constraint of the SM90 blockwise mainloop we instantiate, in one predicate."""
        r = []
        if self.schedule not in SCHEDULES:
            r.append(f"schedule must be one of {SCHEDULES}")
        if self.tile_k != SCALE_BLOCK:
            r.append("tile_k must equal the K scale block (128): one scale per K tile")
        # the weights' side of the tile must hold whole 128-row scale blocks
        weight_side = self.tile_m if self.swap_ab else self.tile_n
        if weight_side % SCALE_BLOCK:
            r.append(f"the weights' tile side ({weight_side}) must be a multiple of {SCALE_BLOCK}")
        # CUTLASS 4.2 (fp8_accumulation.hpp) static_asserts that the B scales of a tile have the
        # accumulator's shape, which fails when tile N spans two 128-wide weight scale blocks
        # (128x256 does not compile); swap-AB puts a 256-wide weight side on M, which compiles.
        if not self.swap_ab and self.tile_n > SCALE_BLOCK:
            r.append(f"without swap-AB tile_n must be <= {SCALE_BLOCK} (one weight scale block along N)")
        if self.schedule == "cooperative" and self.tile_m < 128:
            r.append("cooperative needs tile_m >= 128 (two consumer warp groups split M)")
        if self.tile_n % 8 or not 8 <= self.tile_n <= 256:
            r.append("tile_n must be a multiple of 8 in [8, 256] (WGMMA N)")
        if self.cluster_m * self.cluster_n not in (1, 2, 4):
            r.append("cluster size must be 1, 2 or 4")
        return r

    @property
    def name(self) -> str:
        sched = {"cooperative": "coop", "pingpong": "pp"}[self.schedule]
        swap = "_swapab" if self.swap_ab else ""
        return (
            f"t{self.tile_m}x{self.tile_n}x{self.tile_k}_c{self.cluster_m}x{self.cluster_n}_{sched}{swap}"
        )


# Limit of the native kernels (csrc/native_gemm.cuh keeps a tile prefix per expert in shared memory);
# generate.py writes it into es_dual_limits.h.
NATIVE_MAX_EXPERTS = 1024


@dataclass(frozen=True)
class NativeConfig(_Checked):
    """One of es_dual's own SM90 kernels (csrc/native_gemm.cuh): a persistent, warp-specialized grouped
    GEMM with a TMA producer warp group and tile_m / 64 math warp groups of WGMMA m64 x tile_n x k32.

    swap_ab=False: WGMMA M = tokens, N = weight rows; swap_ab=True: M = weight rows, N = tokens. The
    pipeline depth is what fits in shared memory (computed in the kernel's Mode). cluster=2: the mode
    runs 2-CTA clusters on pairs of tiles, multicasting the weight tiles of tokens x weights kinds
    (every kind of a mode has the same cluster); multicast_tokens: such a kind's pair shares its token
    chunk instead (two weight tiles, the token tile multicast), for kinds whose token tile is the larger."""

    tile_m: int
    tile_n: int
    swap_ab: bool
    cluster: int = 1
    multicast_tokens: bool = False

    def invalid_reasons(self) -> list[str]:
        r = []
        if self.tile_m not in (64, 128, 192):
            r.append("tile_m must be 64, 128 or 192 (one to three math warp groups of 64 WGMMA rows)")
        if self.tile_m == 192 and self.swap_ab:
            r.append("tile_m 192 only without swap-AB (192 weight rows would span two weight scale blocks)")
        if self.tile_m == 192 and self.tile_n > 128:
            r.append("tile_m 192: tile_n must be <= 128 (three math warp groups get 152 registers per thread, "
                     "the accumulator and the promoted sum take tile_n of them)")
        if self.cluster not in (1, 2):
            r.append("cluster must be 1 or 2 CTAs")
        if self.cluster == 2 and not self.swap_ab and not self.multicast_tokens and (self.tile_n // 2) % 8:
            r.append("cluster 2: half of tile_n (each CTA's share of the multicast weight tile) must be a multiple of 8")
        if self.multicast_tokens and (self.cluster != 2 or self.swap_ab):
            r.append("multicast_tokens needs cluster 2 and a tokens x weights kind (swap_ab=False)")
        if self.multicast_tokens and (self.tile_m // 2) % 8:
            r.append("multicast_tokens: half of tile_m (each CTA's share of the token tile) must be a multiple of 8")
        if self.tile_n % 8 or not 8 <= self.tile_n <= 256:
            r.append("tile_n must be a multiple of 8 in [8, 256] (WGMMA N)")
        if self.swap_ab and SCALE_BLOCK % self.tile_m:
            r.append(f"swap-AB: tile_m (weight rows) must divide {SCALE_BLOCK}: one weight scale block per tile")
        if not self.swap_ab:
            # tiles start at multiples of tile_n, so up to 128 - gcd(tile_n, 128) rows into a scale block;
            # the kernel handles a tile that ends in the next block, not one that reaches a third
            if self.tile_n - math.gcd(self.tile_n, SCALE_BLOCK) > SCALE_BLOCK:
                r.append(f"tile_n ({self.tile_n}) would span three {SCALE_BLOCK}-row weight scale blocks")
            if self.tile_n > 192:
                r.append("tile_n must be <= 192: the accumulator and the promoted sum take tile_n registers "
                         "per math thread (232 available)")
        return r

    @property
    def name(self) -> str:
        return (f"native_t{self.tile_m}x{self.tile_n}{'_swapab' if self.swap_ab else ''}"
                f"{'_mt' if self.multicast_tokens else ''}{'_c2' if self.cluster == 2 else ''}")


@dataclass(frozen=True)
class NativeFused:
    """The one kernel of a mode whose buckets are all NativeConfig: a single persistent launch runs the
    tiles of every bucket, each expert with its bucket's tile kind (csrc/native_gemm.cuh, Mode)."""

    kinds: tuple[NativeConfig, ...]
    swap_ab = False  # no per-expert arrays: the orientation is per kind

    @property
    def cluster(self) -> int:
        return self.kinds[0].cluster

    @property
    def name(self) -> str:
        kinds = "_".join(k.name.removeprefix("native_").removesuffix("_c2") for k in self.kinds)
        return f"native_{kinds}{'_c2' if self.cluster == 2 else ''}"


@dataclass(frozen=True)
class Bucket:
    """Experts with max_tokens(previous bucket) < m <= max_tokens run with ``config``."""

    name: str
    max_tokens: int | None  # None: no upper bound (must be the last bucket)
    config: KernelConfig | NativeConfig
    note: str  # what was measured, against what, on which card


def coop(tile_m: int, tile_n: int, cluster: tuple[int, int] = (1, 1), swap_ab: bool = False) -> KernelConfig:
    """A cooperative kernel with the K tile of one scale block: the shape every table row uses so far."""
    return KernelConfig(tile_m, tile_n, SCALE_BLOCK, *cluster, "cooperative", swap_ab)


def table(*rows: tuple) -> tuple[Bucket, ...]:
    """Buckets from (name, max_tokens, config, note) rows, in routing order."""
    return tuple(Bucket(*row) for row in rows)


# Measured on one H200 (docs/perf-notes.md, 2026-11-28, benchmarks/cutlass_tables.py, eager calls,
# overlap = streams), µs on the public workloads, against the single configuration (128x128, cluster 1x2).
_M_DECODE = ("128-row weight tiles: twice the tiles of the 256-row seed tile, so waves balance on "
             "n = 512..4096; no cluster (the multicast operand, the token tile, is tiny). ds_gateup 296 vs "
             "single 316, qwen_gateup 135 vs 139, qwen_down 106 vs 116, ds_decode_ep8 276 vs 296, "
             "ds_decode_ep16 147 vs 163, decode_uniform8 243 vs 266; a 33-64 bucket (128x64) measured slower")
_M_LARGE = ("128x128, cluster 1x2: without the cluster the same or slower on every workload "
            "(t128_c1 vs t128); balanced_big 1827 vs single 1825")
_M_SMALL_K = ("k <= 256: a K tile or two per output tile, so per-tile set-up and epilogue dominate and "
              "256-row weight tiles (half the tiles) win: ds_down_prefill 236 vs 282 with 128-row tiles "
              "and 348 single; at k = 384 128-row tiles win again (qwen_down 106 vs 110)")

# --- Expert specialization -----------------------------------------------------------------------------
# Rows are tried in order: an expert with m tokens runs in the first bucket whose max_tokens >= m.
BUCKETS: tuple[Bucket, ...] = table(
    ("decode", 32, coop(128, 32, swap_ab=True), _M_DECODE),
    ("large", None, coop(128, 128, (1, 2)), _M_LARGE),
)
# For small K (the down projections of fine-grained experts) the seed table's larger weight tiles.
BUCKETS_SMALL_K: tuple[Bucket, ...] = table(
    ("decode", 32, coop(256, 32, (2, 1), swap_ab=True), _M_SMALL_K),
    ("small", 64, coop(256, 64, (2, 1), swap_ab=True), _M_SMALL_K),
    ("large", None, coop(128, 128, (1, 2)), _M_LARGE),
)
# k at or below which BUCKETS_SMALL_K is used for compute-bound calls, masked calls and shapes the native
# kernels do not take (measured at k = 256 and 384). Below
# WIDE_MIN_MEAN_TOKENS tokens per expert the native mode is faster there now (one H100, 2026-12-07,
# benchmarks/mode_ab.py, kernel mode, es / native, µs): ds_down_prefill 277.9 / 257.7 and 277.9 / 258.6 in
# two visits, n = 7168, k = 256 with 256 experts of 8 / 32 / 64 / 128 tokens 192.9 / 177.6, 227.8 / 224.7,
# 292.0 / 269.7, 475.1 / 460.9 (the DeepSeek-R1 TP8 layer's down GEMM), n = 4096, 64 experts of 256
# 127.4 / 114.2; with 128 experts of 512 tokens native is slower (602.0 / 696.9). Masked calls (whose
# token counts the host does not know) were not measured there: they keep the table.
SMALL_K_MAX = 256


NATIVE_K_MAX = 4096  # k at or below which (and above SMALL_K_MAX) the native mode is used
# Calls whose experts hold at least this many tokens on average (two pairs of 128-token chunks each,
# the large kind's cluster tile in native_mc, so that a count off a multiple of 256 leaves at most a
# quarter of a spare chunk pair) are compute-bound, and take native_mc: 128 x 192 tiles, the weight
# tile multicast to two CTAs (a third fewer shared-memory and L2 bytes per FLOP than 128 x 128).
# Measured on one H200 (2026-12-02, kernel mode), µs: balanced_big (4096 tokens per expert) native_mc
# 1744-1746 against es 1804-1806 (benchmarks/mode_ab.py); mixtral_gateup_balanced512 (512) 476-498
# against es 507-513 and native 521-529; but the Qwen3-235B TP4 layer at 4096 tokens (256 per expert,
# counts spread around it, the down GEMM's k = 384) 957.9 with native_mc for both GEMMs against 888.2 with
# native (python -m es_dual.bench --layer, the 2026-12-01c run). Masked calls do not take it (es_mode: tokens_known).
WIDE_MIN_MEAN_TOKENS = 512


def native_fits(total_m: int, n: int, num_experts: int) -> bool:
    """Whether the native kernels take a problem (csrc/api.cu checks the same): the tile prefix in
    shared memory, 32-bit TMA row coordinates and tile numbers (any k: each K block's weight scales come
    with its pipeline stage)."""
    return (num_experts <= NATIVE_MAX_EXPERTS
            and (num_experts + 1) * n <= 2**31 - 1 and (total_m + num_experts) * -(-n // 8) <= 2**31 - 1)


def es_mode(total_m: int, n: int, k: int, num_experts: int, tokens_known: bool = True,
            k_major_scales: bool = True, gather: bool = False) -> str:
    """The expert-specialized mode for a problem's shape (known on the host, unlike the token counts).

    Measured on one H200 (docs/perf-notes.md, 2026-12-01, benchmarks/mode_ab.py, kernel mode, es / native,
    µs; at k <= 256 see SMALL_K_MAX): at 256 < k <= 4096 the native mode is faster or level in every visit (qwen_gateup 133.2 / 130.0,
    132.4 / 129.9 with 128 x 192 tiles, qwen_down 106.2 / 104.5, 104.3 / 99.1; qwen_gateup_zipf 132.6 /
    133.0, qwen3_30b_down 84.4 / 84.5, ds_down_tp4_prefill 400.3 / 399.1); at k = 7168 (the decode rows,
    balanced_big) it is slower or level (on an H100, 2026-12-07, es / native: ds_decode_ep8 358.9 / 343.0,
    ds_decode_ep16 186.3 / 194.6, decode_uniform8 329.2 / 330.3, ds_gateup_prefill 379.6 / 382.6: left as
    it is). Compute-bound calls (WIDE_MIN_MEAN_TOKENS) take native_mc
    whatever their k above SMALL_K_MAX. tokens_known: total_m is the number of tokens (the contiguous
    layout); the masked layout's total_m, E x max_m, says only how large its largest expert is, which
    routed skewed calls to native_mc and made them slower (docs/perf-notes.md, 2026-12-02), so those
    calls are routed by k alone. MN-major activation scales (k_major_scales=False) take a native mode at
    every k: the CUTLASS kernels read K-major scales only (the caller checked native_fits); so do gathered
    rows (gather: the native kernels' producer loads them by index).
    """
    compute_bound = tokens_known and total_m >= WIDE_MIN_MEAN_TOKENS * num_experts
    if not k_major_scales or gather:
        return "native_mc" if compute_bound else "native"
    fits = native_fits(total_m, n, num_experts)
    if k <= SMALL_K_MAX:
        return "native" if fits and tokens_known and not compute_bound else "es_small_k"
    if not fits:
        return "es"
    if compute_bound:
        return "native_mc"
    return "native" if k <= NATIVE_K_MAX else "es"


# --- Single configuration: every expert in one grouped GEMM, the non-specialized baseline --------------
# Same kernel as the "large" buckets, so ES vs single isolates what the routing buys.
SINGLE = Bucket(
    "single",
    None,
    coop(128, 128, (1, 2)),
    note="baseline: one 128x128x128 cooperative grouped GEMM for every expert",
)

# Output dtypes: name in the C API order (out_dtype argument 0, 1), C++ element type.
OUT_DTYPES: tuple[tuple[str, str], ...] = (("bf16", "cutlass::bfloat16_t"), ("fp16", "cutlass::half_t"))

# --- es_dual's own kernels (csrc/native_gemm.cuh) ----------------------------------------------------
# One persistent launch per call runs every bucket's tiles (no stream fork/join, no wave tail per bucket);
# a pipeline stage is sized for the largest kind (here 33 KB: 5 stages). Measured on one H200
# (2026-12-01, benchmarks/mode_ab.py, kernel mode), µs, against the "es" tables: faster at
# 256 < k <= 4096 (qwen_gateup 128.6 vs 131.9, qwen_down 100.1 vs 104.6, qwen3_30b_gateup 129.4 vs
# 135.2, qwen3_30b_down 82.1 vs 86.8, ds_down_tp4_prefill 377 vs 386), slower at k = 7168 with many
# decode experts (ds_decode_ep16 155 vs 141, decode_uniform8 244 vs 236) and at k = 256 (299 vs 235).
# A large kind of 128 x 64 (24 KB stages, 7 of them) was slower everywhere: balanced_big 2735 vs 1860,
# ds_down_prefill 385 vs 299, and no better on the decode rows, so the stage count is not what holds
# the decode rows back. The cutlass backend uses this mode at 256 < k <= 4096 (es_mode).
_N_DECODE = "swap-AB: 128 weight rows x 32 tokens, the decode shape of the seed table without padding M"
_N_SMALL = "swap-AB: 128 weight rows x 64 tokens"
_N_LARGE = "128 tokens x 128 weight rows, two math warp groups"
BUCKETS_NATIVE: tuple[Bucket, ...] = table(
    ("decode", 32, NativeConfig(128, 32, swap_ab=True), _N_DECODE),
    ("small", 64, NativeConfig(128, 64, swap_ab=True), _N_SMALL),
    ("large", None, NativeConfig(128, 128, swap_ab=False), _N_LARGE),
)

# The same with 128 x 192 large tiles: a third fewer shared-memory and L2 bytes per FLOP than 128 x 128
# for compute-bound experts (4 stages of 41 KB), two weight scale blocks in every other tile.
_N_WIDE = "128 tokens x 192 weight rows, two math warp groups; two weight scale blocks per tile"
BUCKETS_NATIVE_WIDE: tuple[Bucket, ...] = BUCKETS_NATIVE[:-1] + table(
    ("large", None, NativeConfig(128, 192, swap_ab=False), _N_WIDE),
)

# The same in 2-CTA clusters: the 192-row weight tiles of the large kind multicast to two token chunks.
_N_MC = _N_WIDE + "; 2-CTA clusters, the weight tile multicast to two token chunks"
BUCKETS_NATIVE_MC: tuple[Bucket, ...] = table(
    ("decode", 32, NativeConfig(128, 32, swap_ab=True, cluster=2), _N_DECODE + "; paired weight tiles"),
    ("small", 64, NativeConfig(128, 64, swap_ab=True, cluster=2), _N_SMALL + "; paired weight tiles"),
    ("large", None, NativeConfig(128, 192, swap_ab=False, cluster=2), _N_MC),
)

# The production modes, in the order of the library's mode argument (0, 1, ...).
MODES: tuple[tuple[str, tuple[Bucket, ...]], ...] = (
    ("es", BUCKETS), ("single", (SINGLE,)), ("es_small_k", BUCKETS_SMALL_K), ("native", BUCKETS_NATIVE),
    ("native_wide", BUCKETS_NATIVE_WIDE), ("native_mc", BUCKETS_NATIVE_MC),
)

# How the bucket kernels of one call are enqueued (the C API's overlap argument, csrc/es_dual.h). They
# depend on the preparation kernel only, not on each other.
OVERLAPS = {
    0: "serial",   # back to back on the caller's stream
    1: "streams",  # fork/join: bucket 0 on the caller's stream, the others on internal streams
    2: "pdl",      # back to back, buckets after the first with programmatic dependent launch
}
# Streams: fastest or equal on every public workload with two or three buckets (one H200, 2026-11-28):
# the next bucket's CTAs fill the SMs that the previous bucket's wave tail leaves idle. PDL saves only the
# launch gap (CUTLASS 4.2's grouped SM90 kernels never trigger their dependents early).
DEFAULT_OVERLAP = 1

# Native candidates that lost to the production modes, kept for tuning builds (their kernels are es_dual's
# own, so these rows exercise the kernel's one- and three-math-warp-group paths). Measured on one H100
# (2026-12-07, benchmarks/mode_ab.py, kernel mode, better of two rounds), µs:
# - three math warp groups (192 tokens x 128 weight rows, 2-CTA clusters): with two (native_mc) a group's
#   path from its WGMMA wait to its next WGMMAs must hide under the other group's 384 cycles of WGMMAs;
#   with three, two groups' 512 cycles cover it. Slower: balanced_big native_mc 1733.7, native_m192
#   (the weight tile multicast to two token chunks) 1824.4, native_m192t (the token tile multicast to two
#   weight tiles: 12 + 16 KB from L2 per CTA and K block, fewer than native_mc's 16 + 12) 1944.9;
#   mixtral_gateup_balanced512 495.8 / 727.4 / 583.2 (192-token chunks pad 512 tokens to 576, pairs of
#   them to 768). Under ncu (balanced_big) native_m192t keeps the tensor pipe 66 % busy against native_mc's
#   78 %, its math warps waiting on their own m64n128 WGMMAs, with fewer shared-memory wavefronts per
#   cycle than native_mc (docs/perf-notes.md, 2026-12-07).
# - one math warp group, 64-row tiles (twice the tiles of the 128-row kinds: ds_decode_ep16's 544 tiles
#   are 4.12 waves on 132 SMs, run as 5; 1088 are 8.24, run as 9): level with the CUTLASS tables, not the
#   predicted 9 % faster: ds_decode_ep16 es 190.0, native_narrow 192.9; ds_decode_ep8 370.8 / 366.4;
#   decode_uniform8 343.9 / 337.3 (ncu, ds_decode_ep16: DRAM 81 % busy, the token chunks read twice as
#   often, an L2 hit rate of 40 %).
# - native_mt: native_mc's decode and small kinds, and a large kind of 128 tokens x 128 weight rows whose
#   2-CTA pair shares its token chunk (two weight tiles of one chunk, the token tile multicast), for experts
#   of one or two 128-token chunks, where native_mc's weight-tile multicast finds no chunk pair: a quarter
#   fewer L2-to-SM bytes for the MoE layer's gate-up GEMM at 4096 tokens (DeepSeek-R1 TP8: 128 tokens per
#   expert, n = 512, k = 7168). In the layer (benchmarks/decode_sweep.py, its gate-up GEMM in this mode, one
#   H100, 2026-12-08, kernel mode): DeepSeek-R1 TP8 1246.3 against 1249.2 µs (the GEMM 451 against the
#   CUTLASS tables' 446), Qwen3-235B TP4 743.7 against 720.2: no gain.
_N_M192 = "192 tokens x 128 weight rows, three math warp groups; 2-CTA clusters, "
_N_NARROW = "64 weight rows (one math warp group): half the tile of the 128-row kinds, finer waves"
_N_MT = "128 tokens x 128 weight rows, two math warp groups; 2-CTA clusters, the token chunk multicast to two weight tiles"
NATIVE_TUNING_MODES: tuple[tuple[str, tuple[Bucket, ...]], ...] = (
    ("native_mt", BUCKETS_NATIVE_MC[:-1] + table(
        ("large", None, NativeConfig(128, 128, swap_ab=False, cluster=2, multicast_tokens=True), _N_MT))),
    ("native_m192", table(("large", None, NativeConfig(192, 128, swap_ab=False, cluster=2),
                           _N_M192 + "the weight tile multicast to two token chunks"))),
    ("native_m192t", table(("large", None, NativeConfig(192, 128, swap_ab=False, cluster=2, multicast_tokens=True),
                            _N_M192 + "the token tile multicast to two weight tiles"))),
    ("native_narrow", table(
        ("decode", 32, NativeConfig(64, 32, swap_ab=True), _N_NARROW + "; 32 tokens"),
        ("small", 64, NativeConfig(64, 64, swap_ab=True), _N_NARROW + "; 64 tokens"),
        ("large", None, NativeConfig(64, 128, swap_ab=False), "64 tokens x 128 weight rows, one math warp group"),
    )),
)

# --- Tuning tables: compiled only when ES_DUAL_TUNING=1 at build time (after MODES, in this order) -----
# Candidates against the measured losses of the seed table on one H200: the persistent bucket kernels
# run one after the other (a wave tail and a launch gap each); 256-row swap-AB tiles give few tiles per
# expert (n = 768: 3), so wave quantization wastes up to a third of a kernel, where 128-row weight
# tiles balance better; 2x1 clusters multicast the tiny token tile, which saves next to nothing.
# Kernels that no production mode uses are compiled for bf16 output only.
_SEED = "seed table"
_T128 = "128-row weight tile: twice the tiles of 256 rows per expert, finer waves; no cluster"
_LARGE = "production large bucket (128x128, cluster 1x2)"
TUNING_MODES: tuple[tuple[str, tuple[Bucket, ...]], ...] = (
    ("t128", table(
        ("decode", 32, coop(128, 32, swap_ab=True), _T128),
        ("small", 64, coop(128, 64, swap_ab=True), _T128),
        ("large", None, coop(128, 128, (1, 2)), _LARGE),
    )),
    ("t128_16", table(
        ("tiny", 16, coop(128, 16, swap_ab=True), _T128 + "; a 16-token tile wastes less on 1-16 tokens"),
        ("decode", 32, coop(128, 32, swap_ab=True), _T128),
        ("small", 64, coop(128, 64, swap_ab=True), _T128),
        ("large", None, coop(128, 128, (1, 2)), _LARGE),
    )),
    ("two", table(
        ("small", 64, coop(128, 64, swap_ab=True), _T128 + "; one launch fewer than t128"),
        ("large", None, coop(128, 128, (1, 2)), _LARGE),
    )),
    ("two32", table(
        ("decode", 32, coop(128, 32, swap_ab=True), _T128 + "; 33-64 tokens go to the large bucket"),
        ("large", None, coop(128, 128, (1, 2)), _LARGE),
    )),
    ("t128_c1", table(
        ("decode", 32, coop(128, 32, swap_ab=True), _T128),
        ("small", 64, coop(128, 64, swap_ab=True), _T128),
        ("large", None, coop(128, 128), "large bucket without a cluster: does 1x2 multicast pay?"),
    )),
    ("t256_c1", table(
        ("decode", 32, coop(256, 32, swap_ab=True), "seed decode tile without its 2x1 cluster"),
        ("small", 64, coop(256, 64, swap_ab=True), "seed small tile without its 2x1 cluster"),
        ("large", None, coop(128, 128, (1, 2)), _LARGE),
    )),
    ("single_c1", table(
        ("single", None, coop(128, 128), "the single baseline without a cluster"),
    )),
    ("t128_pp", table(
        ("decode", 32, KernelConfig(128, 32, SCALE_BLOCK, 1, 1, "pingpong", True),
         "pingpong: each consumer warp group runs whole tiles, one's epilogue under the other's mainloop "
         "(small k: 2-3 K tiles per output tile, so the cooperative epilogue is not hidden)"),
        ("small", 64, KernelConfig(128, 64, SCALE_BLOCK, 1, 1, "pingpong", True), "pingpong, as decode"),
        ("large", None, coop(128, 128, (1, 2)), _LARGE),
    )),
    ("single_256", table(
        ("single", None, coop(256, 128, swap_ab=True),
         "256x128 tile (weights x tokens) for the compute-bound case (balanced_big); 128x256 without "
         "swap-AB is rejected by CUTLASS 4.2"),
    )),
    *NATIVE_TUNING_MODES,
)


def check_table() -> None:
    """The table's own invariants (also run by the tests)."""
    names = [mode for mode, _ in (*MODES, *TUNING_MODES)]
    if len(set(names)) != len(names):
        raise ValueError(f"mode names must be unique, got {names}")
    for mode, buckets in (*MODES, *TUNING_MODES):
        bounds = [b.max_tokens for b in buckets]
        if bounds[-1] is not None or any(x is None for x in bounds[:-1]):
            raise ValueError(f"{mode}: only the last bucket may (and must) have max_tokens=None")
        finite = bounds[:-1]
        if finite != sorted(set(finite)) or (finite and finite[0] < 1):
            raise ValueError(f"{mode}: max_tokens must be strictly increasing and >= 1, got {bounds}")
        if len({b.name for b in buckets}) != len(buckets):
            raise ValueError(f"{mode}: bucket names must be unique")
        native = [isinstance(b.config, NativeConfig) for b in buckets]
        if any(native) and not all(native):
            raise ValueError(f"{mode}: a mode's buckets are all native kernels or all CUTLASS kernels")
        if all(native) and len({b.config.tile_m for b in buckets}) != 1:
            raise ValueError(f"{mode}: the kinds of a native mode share tile_m (its math warp groups)")
        if all(native) and len({b.config.cluster for b in buckets}) != 1:
            raise ValueError(f"{mode}: the kinds of a native mode share the cluster size")
    if DEFAULT_OVERLAP not in OVERLAPS:
        raise ValueError(f"DEFAULT_OVERLAP must be one of {list(OVERLAPS)}, got {DEFAULT_OVERLAP}")


def fused_kernel(buckets: tuple[Bucket, ...]) -> NativeFused | None:
    """The single kernel of a native mode (every bucket a NativeConfig), else None."""
    if all(isinstance(b.config, NativeConfig) for b in buckets):
        return NativeFused(tuple(b.config for b in buckets))
    return None


def kernel_of(buckets: tuple[Bucket, ...], bucket: Bucket) -> KernelConfig | NativeFused:
    """What runs a bucket's experts: the mode's fused native kernel, or the bucket's CUTLASS kernel."""
    return fused_kernel(buckets) or bucket.config


def kernel_configs(modes=MODES) -> tuple[KernelConfig | NativeFused, ...]:
    """Distinct kernels of ``modes``, in table order (one TU each per out dtype)."""
    seen: dict = {}
    for _, buckets in modes:
        for b in buckets:
            seen.setdefault(kernel_of(buckets, b))
    return tuple(seen)


def boundaries() -> tuple[int, ...]:
    """Token counts at which an ES routing changes bucket (the finite max_tokens of every ES table)."""
    return tuple(sorted({b.max_tokens for table_ in (BUCKETS, BUCKETS_SMALL_K) for b in table_ if b.max_tokens}))


check_table()

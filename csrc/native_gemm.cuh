// es_dual's own SM90 FP8 blockwise grouped GEMM: one warp-specialized persistent kernel per bucket row of
// es_dual/cutlass/buckets.py (NativeConfig), built from CuTe/CUTLASS primitives (TMA copy atoms, WGMMA
// atoms, transaction barriers) instead of CUTLASS's blockwise collective, so that the tile shapes, the
// scale handling and the epilogue are ours.
//
// For every expert e whose token count m lies in this bucket's range (min_tokens, max_tokens]:
//   out[offs[e] + i, j] = sum_kb sa[offs[e] + i, kb] * sb[e, j / 128, kb] * (a[offs[e] + i, kb] . b[e, j, kb])
// (a gather reads a and sa at row row_index[offs[e] + i] instead of offs[e] + i)
// where kb runs over the 128-wide K blocks and "." is the FP8 dot product over one K block (accumulated by
// the tensor cores in FP32, then scaled and added into a second FP32 accumulator: "promotion").
//
// Roles (one CTA per SM, persistent):
//   warp group kMathWGs (the last one): the producer. Its warps 0 and 1 walk the CTA's tiles and, for
//     every K block, wait for a free pipeline stage; warp 0's lane 0 issues two TMA loads into it, the
//     token tile (tokens x 128 K bytes) and the weight tile (weight rows x 128 K bytes), and warp 1's
//     32 lanes copy the scales of that K block into the stage (4 bytes each: cp.async): the tokens'
//     from the caller's a_scale, one per row, and the tile's weight scale (two for tiles that span two
//     128-row weight scale blocks). Into a tile's first stage warp 0's lane 0 also writes the tile's kind
//     and column split (StageHeader), so that the math warps never decode a tile. A gather (row_index:
//     tile row r is row row_index[r] of a, as the MoE layer's first GEMM reads each token's one quantized
//     row for every expert it is routed to) loads the token tile with warp 0's 32 lanes by cp.async
//     instead of TMA (gather_rows), each stage then also full when their copies have landed.
//   warp groups 0 .. kMathWGs-1 (one to three): the math. Each owns 64 rows of the WGMMA M side. Per K
//     block: wait for the stage, 4 WGMMAs (K = 32 each), wait for them, free the stage, promote with the
//     two scales (compute_tile: kinds whose two accumulators fit the registers keep the next block's
//     WGMMAs running while the previous block is promoted; wider kinds of two math warp groups split
//     each block's WGMMAs in two halves, the first promoted while the second runs; with three math warp
//     groups the other two cover a group's promotion: the tuning modes native_m192*, measured slower than
//     two, docs/perf-notes.md 2026-12-07). Per tile: read the tile's kind from its first stage, run its
//     K loop, stage the rounded result in shared memory and hand it to the store warps (one-accumulator
//     kinds: under the next tile's first WGMMAs). The math warp groups never meet each other: everything
//     a tile needs comes with its stages.
//   warps 2-3 of the producer warp group: the stores. They copy each staged tile to `out`, only the rows
//     and columns that belong to the expert (a tile may run past the expert's last row or n; those are
//     never stored): a full tile of a tokens x weights kind by TMA stores, others with 16-byte stores;
//     while the math warp groups run the next tile's K loop; the math waits for them only before it
//     stages the next tile.
//
// Orientation (SwapAB):
//   false: WGMMA M = tokens (TileM = 64 * kMathWGs), N = weight rows. Row scale = token scale, column
//          scale = weight scale: one weight scale block per tile for TileN dividing 128; wider tiles
//          (e.g. 192, fewer shared-memory and L2 bytes per FLOP for compute-bound experts) span two,
//          and each accumulator column takes the scale of the block it lies in.
//   true : WGMMA M = weight rows (TileM = 64 * kMathWGs, within one 128-row weight scale block),
//          N = tokens (TileN). Row scale = weight scale, column scale = token scale. For experts with
//          few tokens: a 32-token tile wastes nothing on a 128-row M side.
//
// Tiles of an expert: ceil(m / token rows) token chunks x ceil(n / weight rows) weight tiles, in groups
// of kChunkGroup chunks (or chunk pairs), chunks fastest within a group, then weight tiles (CTAs running
// at the same time share a few weight tiles and the group's chunks in L2). Every CTA scans the
// offsets (or the masked layout's counts: ExpertRows) itself at start (tiles per expert, exclusive
// prefix in shared memory) and takes the tiles c, c + clusters, ... of its cluster c (a cluster is one
// CTA, or two: see Mode): no device-to-host copy, no preparation kernel, nothing to prepare per call
// but the tensor maps. Rows past the expert's end that a TMA box covers belong to the next expert (or
// to the masked rows past its count, or lie past total_m and read as zeros): they are computed and
// never stored, so a GEMM row never reads another expert's data into a stored result.
#pragma once

#include <atomic>
#include <tuple>
#include <type_traits>
#include <utility>

#include <cuda.h>  // CUtensorMap (types only: the encoder is reached through the runtime, no libcuda link)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cute/arch/cluster_sm90.hpp"
#include "cute/arch/copy_sm90_desc.hpp"
#include "cute/arch/copy_sm90_tma.hpp"
#include "cute/arch/mma_sm90_desc.hpp"
#include "cute/arch/mma_sm90_gmma.hpp"
#include "cute/arch/mma_sm90_gmma_ext.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/arch/reg_reconfig.h"

#include "operands.cuh"

namespace es_dual::native {

constexpr int kMaxExperts = kNativeMaxExperts;  // the tile prefix per expert lives in shared memory
constexpr int kSmemBudget = 232448;   // bytes of dynamic shared memory a CTA may opt in to on SM90
constexpr int kBlockK = kScaleBlock;  // one K block = one scale = one 128-byte swizzled smem row

// Ablation switches (benchmarks/native_ablate.cu only, compiled with -DES_DUAL_NATIVE_ABLATE=BITS; the library
// never defines it, so every `ablated(...)` below is a compile-time false there): each bit leaves one part
// of the kernel's work out, so that the cycles of the rest show what that part costs. Compile-time, so that
// the rest is the kernel's own code. The results are wrong under any of them.
enum Ablate : int {
  kAblateScaleReads = 2,    // the promotion's scales are constants (no shared-memory reads)
  kAblateStores = 4,        // the store warps store nothing
  kAblateScaleCopies = 8,   // the scale warp copies no token scales
  kAblateTmaLoads = 16,     // the producer loads no operand tiles (the stages' barriers still complete)
  kAblateMath = 32,         // no promotion, and so no WGMMAs (the compiler drops what nothing reads)
  kAblateStaging = 64,      // the math stages no output tile (skipped by a run-time test, so that the
                            // values stay computed: ptxas drops WGMMAs whose results nothing reads)
  kAblatePromotion = 128,   // the promotion only on a tile's last K block (likewise)
  kAblateStoreWait = 256,   // the math does not wait for the store warps before it stages a tile (kOutEmpty):
                            // races on the staging buffer
};
#ifdef ES_DUAL_NATIVE_ABLATE
__host__ __device__ constexpr bool ablated(Ablate bit) { return (ES_DUAL_NATIVE_ABLATE) & bit; }
#else
__host__ __device__ constexpr bool ablated(Ablate) { return false; }
#endif

// ---------------------------------------------------------------------------------------------------
// PTX helpers
// ---------------------------------------------------------------------------------------------------
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Named barriers (0 is __syncthreads) of the math and store warps: a tile staged in shared memory /
// copied out of it. Hardware barriers, so that the store warps, idle most of the time, wait descheduled
// instead of polling an mbarrier.
constexpr int kOutFull = 4;
constexpr int kOutEmpty = 5;

// Shared-memory matrix descriptor of a K-major tile written by TMA with the 128-byte swizzle: rows of
// 128 bytes, 8-row groups 1024 bytes apart (stride byte offset), swizzle mode 1 (128B).
__device__ __forceinline__ uint64_t smem_desc_k_major_sw128(const void* smem) {
  cute::GmmaDescriptor desc;
  desc.bitfield.start_address_ = static_cast<uint16_t>(cute::cast_smem_ptr_to_uint(smem) >> 4);
  desc.bitfield.leading_byte_offset_ = 1;  // unused for swizzled K-major layouts
  desc.bitfield.stride_byte_offset_ = 1024 >> 4;
  desc.bitfield.base_offset_ = 0;  // tiles are 1024-byte aligned
  desc.bitfield.layout_type_ = 1;  // SWIZZLE_128B
  return desc.desc_;
}

// The m64 x N x k32 FP8 WGMMA (both operands K-major in shared memory) for a compile-time N.
template <int N> struct Wgmma;
#define ES_DUAL_WGMMA(N) \
  template <> struct Wgmma<N> { using Op = cute::SM90::GMMA::MMA_64x##N##x32_F32E4M3E4M3_SS_TN<>; };
ES_DUAL_WGMMA(8) ES_DUAL_WGMMA(16) ES_DUAL_WGMMA(24) ES_DUAL_WGMMA(32) ES_DUAL_WGMMA(48) ES_DUAL_WGMMA(64)
ES_DUAL_WGMMA(96) ES_DUAL_WGMMA(128) ES_DUAL_WGMMA(192) ES_DUAL_WGMMA(256)
#undef ES_DUAL_WGMMA

template <int N, size_t... I>
__device__ __forceinline__ void wgmma_call(uint64_t a, uint64_t b, float* d, bool accumulate,
                                           std::index_sequence<I...>) {
  Wgmma<N>::Op::fma(a, b, d[I]..., accumulate ? cute::SM90::GMMA::ScaleOut::One : cute::SM90::GMMA::ScaleOut::Zero);
}

template <int N>
__device__ __forceinline__ void wgmma(uint64_t a, uint64_t b, float* d, bool accumulate) {
  wgmma_call<N>(a, b, d, accumulate, std::make_index_sequence<N / 2>{});
}

// One K block's WGMMAs of a math warp group, committed: N accumulator columns in Parts commit groups of
// N / Parts columns (the same registers, in one N-wide WGMMA's layout), each 4 WGMMAs of K = 32 (+32 bytes
// along K inside the swizzled row: +2 in the descriptors' 16-byte units).
template <int N, int Parts>
__device__ __forceinline__ void issue_block(uint64_t desc_a, uint64_t desc_b, float* acc) {
  constexpr int kPart = N / Parts;
  constexpr uint64_t kPartRows = uint64_t(kPart) * kBlockK / 16;  // a part's B rows, in descriptor units
  static_assert(kPart * kBlockK % 1024 == 0, "each part starts on a whole swizzle atom");
#pragma unroll
  for (int i = 0; i < N / 2; ++i) cute::warpgroup_fence_operand(acc[i]);
  cute::warpgroup_arrive();
#pragma unroll
  for (int part = 0; part < Parts; ++part) {
#pragma unroll
    for (int k = 0; k < kBlockK / 32; ++k)
      wgmma<kPart>(desc_a + 2 * k, desc_b + part * kPartRows + 2 * k, acc + part * kPart / 2, k > 0);
    cute::warpgroup_commit_batch();
  }
}

// Rounding to the output type. store2: x and y, rounded, as one 4-byte store at shared address dst (x at
// the lower address), in one volatile asm statement, so that the rounded pair lives in a register only
// between its conversion and its store.
template <class T> struct Pack2;
template <> struct Pack2<cutlass::bfloat16_t> {
  static __device__ __forceinline__ void store2(uint32_t dst, float x, float y) {
    asm volatile("{\n.reg .b32 p;\ncvt.rn.bf16x2.f32 p, %1, %2;\nst.shared.b32 [%0], p;\n}\n"
                 :: "r"(dst), "f"(y), "f"(x) : "memory");
  }
  static __device__ __forceinline__ uint16_t one(float x) {
    __nv_bfloat16 v = __float2bfloat16_rn(x);
    return reinterpret_cast<uint16_t&>(v);
  }
};
template <> struct Pack2<cutlass::half_t> {
  static __device__ __forceinline__ void store2(uint32_t dst, float x, float y) {
    asm volatile("{\n.reg .b32 p;\ncvt.rn.f16x2.f32 p, %1, %2;\nst.shared.b32 [%0], p;\n}\n"
                 :: "r"(dst), "f"(y), "f"(x) : "memory");
  }
  static __device__ __forceinline__ uint16_t one(float x) {
    __half v = __float2half_rn(x);
    return reinterpret_cast<uint16_t&>(v);
  }
};

// ---------------------------------------------------------------------------------------------------
// Tile kinds and modes
// ---------------------------------------------------------------------------------------------------
constexpr int kMaxKinds = 4;  // tile kinds (buckets) of one mode

// The head of a stage's scales. The weight scales of its K block come with every stage (the scale warp's
// lanes 0 and 1); the tile's kind and the column groups of its first weight scale block
// (first_block_groups: (128 - col0 % 128) / 8, tokens x weights kinds wider than 128 only) come with
// the tile's first stage, written by the TMA lane before its arrival on the stage's barrier (an
// mbarrier arrival releases, the math's wait on the barrier acquires).
struct StageHeader {
  float weight_scale[2];  // the tile's first and second 128-row weight scale block (zero when none)
  int kind;                // these two 8-byte aligned (stored and loaded as a pair)
  int first_block_groups;
};
static_assert(offsetof(StageHeader, kind) % 8 == 0, "StageHeader's ints are one 8-byte access");

constexpr int gcd(int a, int b) { return b == 0 ? a : gcd(b, a % b); }

// One tile shape and orientation (a bucket of es_dual/cutlass/buckets.py, NativeConfig). MulticastTokens
// (tokens x weights kinds of 2-CTA modes): the pair of a cluster shares the token chunk instead of the
// weight tile (see Mode).
template <bool SwapAB, int TileM, int TileN, bool MulticastTokens = false>
struct Kind {
  static constexpr bool kSwapAB = SwapAB;
  static constexpr bool kMulticastTokens = MulticastTokens;
  static_assert(!(SwapAB && MulticastTokens), "swap-AB kinds multicast nothing");
  static constexpr int kTileM = TileM, kTileN = TileN;
  static constexpr int kMathWGs = TileM / 64;
  static constexpr int kTokenRows = SwapAB ? TileN : TileM;   // rows of a per tile
  static constexpr int kWeightRows = SwapAB ? TileM : TileN;  // rows of b per tile
  static_assert(TileM % 64 == 0 && TileM <= 192, "one to three math warp groups of 64 WGMMA rows");
  static_assert(TileN % 8 == 0 && TileN >= 8 && TileN <= 256, "WGMMA N");
  // The weight rows of a tile lie in one 128-row weight scale block, or (tokens x weights kinds wider
  // than 128, e.g. 192) in two: tiles start at multiples of TileN, so at most 128 - gcd(TileN, 128) rows
  // into a block, and the tile ends inside the next one.
  static constexpr bool kTwoWeightScales = !SwapAB && kScaleBlock % kWeightRows != 0;
  static_assert(SwapAB ? kScaleBlock % kWeightRows == 0 : kWeightRows - gcd(kWeightRows, kScaleBlock) <= kScaleBlock,
                "the weight rows of a tile span at most two 128-row weight scale blocks");
  static constexpr int kMBytes = TileM * kBlockK;  // WGMMA A operand tile (a multiple of 1024 bytes)
  static constexpr int kNBytes = TileN * kBlockK;  // WGMMA B operand tile (a multiple of 1024 bytes)
  // A stage's scales: the header (StageHeader), then the tokens' scales of the K block, one float per
  // token row (copied by the producer warp's lanes from the caller's K-major a_scale: a 4-byte copy per
  // row, which TMA cannot do for rows of k / 128 floats that are not 16-byte multiples).
  static constexpr int kScaleBytes = (int(sizeof(StageHeader)) + kTokenRows * 4 + 127) / 128 * 128;
  // The staged output tile. Tokens x weights kinds wider than 128 (weight rows a multiple of 64): atoms of
  // 64 columns (128 bytes) x all token rows, each in TMA's 128-byte swizzle, so that a full tile leaves by
  // TMA stores (one per atom) and the stores into it have no bank conflicts. Other kinds: [token][weight
  // row] rows, padded by 16 bytes against bank conflicts, for the store warps' 16-byte copies. (Measured
  // on an H100, docs/perf-notes.md 2026-12-07: TMA stores took 1.5-4.5 % off the 128 x 192 kind's cycles
  // on balanced_big's shape; the 128-wide kinds keep the store warps until they are measured with them.)
  static constexpr bool kTmaStore = !SwapAB && kWeightRows % 64 == 0 && kWeightRows > 128;
  static constexpr int kOutPitch = kWeightRows + 8;  // swap-AB kinds: a staged row, elements
  static constexpr int kOutRowPitch = kTmaStore ? 64 : kOutPitch;  // elements from one token row to the next
  static constexpr int kOutBytes = kTmaStore ? kTokenRows * kWeightRows * 2
                                             : (kTokenRows * kOutPitch * 2 + 1023) / 1024 * 1024;
  // Element offset of token row r, weight row (column) c in the staged tile (kTmaStore: the 16-byte
  // chunks of a 128-byte row permuted by the row's index mod 8, as the 128-byte swizzle places them).
  static __device__ __forceinline__ int out_offset(int r, int c) {
    if constexpr (kTmaStore)
      return (c / 64) * (kTokenRows * 64) + r * kOutRowPitch + ((((c % 64) >> 3) ^ (r & 7)) << 3) + (c & 7);
    else
      return r * kOutPitch + c;
  }
  static constexpr uint32_t kTxBytes = kMBytes + kNBytes;  // the TMA bytes of a stage (not the scales)
  static constexpr uint32_t kWeightBytes = kWeightRows * kBlockK;  // of them, the weight tile's (a gather's)
};

constexpr int cmax(int a) { return a; }
template <class... T>
constexpr int cmax(int a, int b, T... rest) { return cmax(a > b ? a : b, rest...); }

// A mode: the tile kinds of its buckets, in routing order, the output type and the cluster size. One
// persistent launch runs the tiles of every kind; a pipeline stage is sized for the largest kind.
//
// Cluster 2: the two CTAs of a cluster work on a pair of tiles at a time, and every stage of either
// CTA is released by the math of both (the producers may write each other's stages), so both walk the
// same pair list. Tokens x weights kinds share one operand tile: by default a pair is two token chunks
// of one weight tile, each CTA loading half of the weight tile for both (TMA multicast): a third fewer L2-to-SM bytes for a 128 x 192 tile, which is what bounds compute-bound
// experts without it; kinds with kMulticastTokens (192 tokens x 128 weight rows) pair two weight tiles
// of one token chunk and multicast the token tile instead. Swap-AB kinds pair two weight tiles of one
// token chunk and load their own operands. A pair whose second tile lies past the expert (an odd
// count) computes that tile and stores nothing.
template <class ElementD_, int Cluster, class... Kinds>
struct Mode {
  using ElementD = ElementD_;
  static constexpr int kCluster = Cluster;
  static_assert(Cluster == 1 || Cluster == 2, "clusters of one or two CTAs");
  template <class K> static constexpr bool kMulticastWeights = Cluster == 2 && !K::kSwapAB && !K::kMulticastTokens;
  template <class K> static constexpr bool kMulticastTokens = Cluster == 2 && K::kMulticastTokens;
  static_assert(Cluster == 2 || !(Kinds::kMulticastTokens || ...), "multicast needs a 2-CTA cluster");
  static constexpr int kNumKinds = sizeof...(Kinds);
  static constexpr bool kTmaStores = (Kinds::kTmaStore || ...);  // some kind's tiles leave by TMA stores
  // some kind's token tile is shared by the pair of a cluster: such a mode gathers no rows (row_index)
  static constexpr bool kSharesTokens = (kMulticastTokens<Kinds> || ...);
  static_assert(kNumKinds >= 1 && kNumKinds <= kMaxKinds, "1 to kMaxKinds tile kinds");
  template <int I> using KindAt = std::tuple_element_t<I, std::tuple<Kinds...>>;
  static constexpr int kMathWGs = KindAt<0>::kMathWGs;
  static_assert(((Kinds::kMathWGs == kMathWGs) && ...), "every kind of a mode has the same math warp groups");
  static constexpr int kMathThreads = 128 * kMathWGs;
  static constexpr int kThreads = kMathThreads + 128;
  static constexpr int kStoreThreads = 64;  // warps 2-3 of the producer warp group
  // Registers per thread after setmaxnreg: the producer warp group gives all but kProducerRegisters back,
  // the math warp groups share the rest of the SM's 64 K (multiples of 8, at most 248): 248 for one, 232
  // for two, 152 for three. With one math warp group there are registers to spare, and the producer
  // keeps 120 (at 40 its loops spill for three tile kinds of 64 rows).
  static constexpr int kProducerRegisters = kMathWGs == 1 ? 120 : 40;
  static constexpr int kMathRegistersFit = (65536 - 128 * kProducerRegisters) / kMathThreads / 8 * 8;
  static constexpr int kMathRegisters = kMathRegistersFit > 248 ? 248 : kMathRegistersFit;

  static constexpr int kMBytes = cmax(Kinds::kMBytes...);
  static constexpr int kNBytes = cmax(Kinds::kNBytes...);
  static constexpr int kScaleBytes = cmax(Kinds::kScaleBytes...);
  static constexpr int kOutBytes = cmax(Kinds::kOutBytes...);
  static constexpr int kStageBytes = kMBytes + kNBytes + kScaleBytes;
  static constexpr int kScheduleBytes = (2 * (kMaxExperts + 4) + 32) * 4;  // tile prefix, row starts, warp sums
  static constexpr int kBarrierBytes = 2 * 16 * 8;  // full + empty per stage (<= 16)
  static constexpr int kFixedBytes = kOutBytes + kScheduleBytes + kBarrierBytes
                                     + 1024;  // the base rounded up to 1024 bytes
  static constexpr int kStagesFit = (kSmemBudget - kFixedBytes) / kStageBytes;
  static constexpr int kStages = kStagesFit > 16 ? 16 : kStagesFit;
  static_assert(kStages >= 3, "a pipeline needs at least three stages");
  static constexpr int kSmemBytes = kStages * kStageBytes + kFixedBytes;
};

// Calls f(Kind{}) for the mode's kind number `kind` (a compile-time type for a run-time index).
template <class M, int I = 0, class F>
__device__ __forceinline__ void with_kind(int kind, F&& f) {
  if constexpr (I < M::kNumKinds) {
    if (kind == I) f(typename M::template KindAt<I>{});
    else with_kind<M, I + 1>(kind, f);
  }
}

// ---------------------------------------------------------------------------------------------------
// Kernel parameters (one struct, passed by value as a __grid_constant__ so the tensor maps live in the
// parameter space, where TMA reads them). Per kind: its own boxes.
// ---------------------------------------------------------------------------------------------------
struct Params {
  CUtensorMap tokens[kMaxKinds];        // a       : dims {k, total_m}, FP8, box {128, token rows}, 128B swizzle
  CUtensorMap weights[kMaxKinds];       // b       : dims {k, E * n},   FP8, box {128, weight rows}, 128B swizzle
  CUtensorMap outs[kMaxKinds];          // out     : dims {n, total_m}, 2 bytes, box {64, token rows}, 128B swizzle (kTmaStore kinds)
  const uint8_t* a;                     // a gather's a (row_index): rows of k bytes
  const int32_t* row_index;             // nullptr, or (total_m): tile row r is row row_index[r] of a and a_scale
  const float* a_scale;                 // (total_m, k blocks), as the caller gives it: row r, block kb at
  int64_t a_scale_row_stride;           // r * a_scale_row_stride + kb * a_scale_k_stride (K-major: k blocks
  int64_t a_scale_k_stride;             // and 1; MN-major: 1 and the caller's leading dimension)
  const float* b_scale;                 // (E, n blocks, k blocks) row-major
  uint8_t* out;                         // (total_m, n), 2-byte elements
  ExpertRows expert_rows;               // offsets (E + 1) or masked counts (E), int32 or int64
  int total_m, n, k, num_experts;
  int k_blocks;                         // ceil(k / 128), read from the parameter space where used (no spill)
  int max_tokens[kMaxKinds];            // kind i: experts with max_tokens[i - 1] < m <= max_tokens[i]
};

// The tile a CTA works on, as both roles decode it from the linear tile index.
struct Tile {
  int expert;
  int kind;
  int row0;  // first token row of the tile (row of a and out)
  int rows;  // rows of the tile that belong to the expert (0 .. token rows; 0 only for a pair's spare)
  int col0;  // first weight row of the tile within the expert (column of out; >= n for a pair's spare)
};

// The kind (bucket) of an expert with m > 0 tokens; -1 for none.
template <class M>
__device__ __forceinline__ int kind_of(const Params& p, int m) {
  if (m <= 0) return -1;
#pragma unroll
  for (int i = 0; i < M::kNumKinds; ++i)
    if (m <= p.max_tokens[i]) return i;
  return -1;
}

// A kind's tile shape and how its tiles pair in a cluster: 2 token chunks per cluster tile
// (multicast kinds) or 2 weight tiles (swap-AB kinds of a 2-CTA mode), else 1 and 1.
struct TileShape {
  int token_rows, weight_rows, chunks_per_pair, weight_tiles_per_pair;

  // Cluster tiles of an expert of m tokens along each side: (paired) token chunks, (paired) weight tiles.
  __device__ __forceinline__ int pair_chunks(int m) const {
    return ((m + token_rows - 1) / token_rows + chunks_per_pair - 1) / chunks_per_pair;
  }
  __device__ __forceinline__ int paired_weight_tiles(int n) const {
    return ((n + weight_rows - 1) / weight_rows + weight_tiles_per_pair - 1) / weight_tiles_per_pair;
  }
  __device__ __forceinline__ int cluster_tiles(int m, int n) const { return pair_chunks(m) * paired_weight_tiles(n); }
};

template <class M>
__device__ __forceinline__ TileShape tile_shape(int kind) {
  TileShape shape{1, 1, 1, 1};
  with_kind<M>(kind, [&](auto k) {
    using K = decltype(k);
    shape.token_rows = K::kTokenRows;
    shape.weight_rows = K::kWeightRows;
    shape.chunks_per_pair = M::template kMulticastWeights<K> ? 2 : 1;
    shape.weight_tiles_per_pair = M::kCluster == 2 && !M::template kMulticastWeights<K> ? 2 : 1;
  });
  return shape;
}

// Token chunks (pairs of chunks in 2-CTA modes) per group of the tile order (Schedule::decode).
constexpr int kChunkGroup = 8;

// Where the CTA's schedule lives in shared memory, built by every CTA at start from the offsets (a
// tile's decode reads shared memory only: a global load there would stall the math at every tile start).
struct Schedule {
  int* tile_start;  // [E + 1]: exclusive prefix of the tiles per expert; [E] = total tiles
  int* row_bound;   // [E + 1] (E when masked): ExpertRows::bound of each expert, < 2^31 (total_m is)

  // Expert e's rows [lo, hi) (the documented meaning also of offsets or counts that break the contract).
  __device__ __forceinline__ void expert_rows(const Params& p, int e, int& lo, int& hi) const {
    int64_t lo64, hi64;
    p.expert_rows.range(e, [&](int i) { return int64_t(row_bound[i]); }, lo64, hi64);
    lo = int(lo64), hi = int(hi64);
  }

  // Cluster tile t as CTA `rank` of its cluster sees it.
  template <class M>
  __device__ __forceinline__ Tile decode(const Params& p, int t, int rank) const {
    // The last expert whose first tile is <= t: tile_start[lo] <= t < tile_start[lo + 1] (experts with
    // no tile repeat a start; the search lands past them on the expert that owns t).
    int lo = 0, hi = p.num_experts;
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      if (tile_start[mid] <= t) lo = mid; else hi = mid;
    }
    int first_row, end_row;
    expert_rows(p, lo, first_row, end_row);
    Tile tile;
    tile.expert = lo;
    tile.kind = kind_of<M>(p, end_row - first_row);
    const TileShape shape = tile_shape<M>(tile.kind);
    const int paired_weight_tiles = shape.paired_weight_tiles(p.n);
    // Groups of kChunkGroup (paired) token chunks, chunks fastest within a group: the clusters of one
    // wave share a few weight tiles and a group's token chunks in L2, rather than all of the expert's
    // weight tiles (which the next wave would read again).
    const int pair_chunks = shape.pair_chunks(end_row - first_row);
    const int local = t - tile_start[lo];
    int pair_chunk = 0, pair_weight = local;  // one chunk (all decode experts): no division
    if (pair_chunks > 1) {
      const int group = local / (kChunkGroup * paired_weight_tiles);
      const int in_group = local - group * kChunkGroup * paired_weight_tiles;
      const int group_chunks = min(kChunkGroup, pair_chunks - group * kChunkGroup);
      pair_weight = in_group / group_chunks;
      pair_chunk = group * kChunkGroup + (in_group - pair_weight * group_chunks);
    }
    const int chunk = pair_chunk * shape.chunks_per_pair + (shape.chunks_per_pair > 1 ? rank : 0);
    const int weight_tile = pair_weight * shape.weight_tiles_per_pair + (shape.weight_tiles_per_pair > 1 ? rank : 0);
    tile.row0 = first_row + chunk * shape.token_rows;
    tile.rows = max(0, min(shape.token_rows, end_row - tile.row0));  // 0: the spare tile of a pair
    tile.col0 = weight_tile * shape.weight_rows;                      // >= n: likewise
    return tile;
  }
};

// Every thread of the CTA: count each expert's tiles (its kind's shape) and scan them into
// sched.tile_start. Returns the total.
template <class M>
__device__ int build_schedule(const Params& p, const Schedule& sched, int* warp_sums) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  int carry = 0;
  for (int e = threadIdx.x; e < p.expert_rows.bounds(p.num_experts); e += blockDim.x)
    sched.row_bound[e] = int(p.expert_rows.bound(e));
  __syncthreads();
  for (int base = 0; base < p.num_experts; base += blockDim.x) {
    const int e = base + threadIdx.x;
    int tiles = 0;
    if (e < p.num_experts) {
      int lo, hi;
      sched.expert_rows(p, e, lo, hi);
      const int m = hi - lo;
      const int kind = kind_of<M>(p, m);
      if (kind >= 0) tiles = tile_shape<M>(kind).cluster_tiles(m, p.n);
    }
    int x = tiles;  // inclusive scan within the warp
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, x, d);
      if (lane >= d) x += y;
    }
    if (lane == 31) warp_sums[warp] = x;
    __syncthreads();
    if (warp == 0) {
      int w = lane < warps ? warp_sums[lane] : 0;
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, w, d);
        if (lane >= d) w += y;
      }
      if (lane < warps) warp_sums[lane] = w;
    }
    __syncthreads();
    if (e < p.num_experts) sched.tile_start[e] = carry + (warp > 0 ? warp_sums[warp - 1] : 0) + x - tiles;
    carry += warp_sums[warps - 1];
    __syncthreads();  // warp_sums is rewritten by the next chunk
  }
  if (threadIdx.x == 0) sched.tile_start[p.num_experts] = carry;
  __syncthreads();
  return carry;
}

// Shared memory of one CTA, carved in this order (see Mode).
template <class M>
struct Smem {
  uint8_t* m;        // [kStages][kMBytes]  WGMMA A operand tiles
  uint8_t* n;        // [kStages][kNBytes]  WGMMA B operand tiles
  uint16_t* out;     // staged output tile
  uint8_t* scales;   // [kStages][kScaleBytes]: StageHeader, then the token scales
  Schedule sched;
  int* warp_sums;    // [32]
  cutlass::arch::ClusterTransactionBarrier* full;   // [kStages]: data landed
  cutlass::arch::ClusterTransactionBarrier* empty;  // [kStages]: stage free again

  __device__ StageHeader* header(int stage) const {
    return reinterpret_cast<StageHeader*>(scales + stage * M::kScaleBytes);
  }
  __device__ float* token_scales(int stage) const { return reinterpret_cast<float*>(header(stage) + 1); }

  __device__ explicit Smem(uint8_t* base) {
    m = base;
    n = m + M::kStages * M::kMBytes;
    out = reinterpret_cast<uint16_t*>(n + M::kStages * M::kNBytes);
    scales = reinterpret_cast<uint8_t*>(out) + M::kOutBytes;
    int* s = reinterpret_cast<int*>(scales + M::kStages * M::kScaleBytes);
    // kMaxExperts + 4 entries each, so that every array (and the barriers) stays 16-byte aligned.
    sched = Schedule{s, s + kMaxExperts + 4};
    warp_sums = s + 2 * (kMaxExperts + 4);
    full = reinterpret_cast<cutlass::arch::ClusterTransactionBarrier*>(warp_sums + 32);
    empty = full + M::kStages;
  }
};

// 4 bytes from global to shared memory, asynchronously; zeros and no read when `valid` is false.
__device__ __forceinline__ void copy_float_async(float* dst, const float* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n"
               :: "r"(cute::cast_smem_ptr_to_uint(dst)), "l"(src), "r"(valid ? 4 : 0) : "memory");
}

// A StageHeader's two ints, stored and loaded by volatile asm: the barrier operations around them are
// volatile asm without memory clobbers, and volatile asm statements keep their order.
__device__ __forceinline__ void store_shared_int2(int* dst, int x, int y) {
  asm volatile("st.shared.v2.s32 [%0], {%1, %2};\n" :: "r"(cute::cast_smem_ptr_to_uint(dst)), "r"(x), "r"(y) : "memory");
}
__device__ __forceinline__ int2 load_shared_int2(const int* src) {
  int2 v;
  asm volatile("ld.shared.v2.s32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(cute::cast_smem_ptr_to_uint(src)) : "memory");
  return v;
}

// 16 bytes from global to shared memory, asynchronously, through the L2 only, with the L2 policy `hint`
// (a cute::TMA::CacheHintSm90 value); zeros and no read when `valid` is false.
__device__ __forceinline__ void copy16_async(void* dst, const void* src, bool valid, uint64_t hint) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n"
               :: "r"(cute::cast_smem_ptr_to_uint(dst)), "l"(src), "r"(valid ? 16 : 0), "l"(hint) : "memory");
}

// One arrival on `bar` once every cp.async this thread issued before has landed (counted in the
// barrier's arrival count: .noinc).
__device__ __forceinline__ void arrive_when_copied(void* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n"
               :: "r"(cute::cast_smem_ptr_to_uint(bar)) : "memory");
}

// The producer warps' loads of one tile: per K block, wait for a free stage, then load into it. Warp 0's
// lane 0 issues the two TMA loads (the token tile, and the weight tile or, multicast kinds, this CTA's
// half of it into the same stage of both CTAs), and into the tile's first stage writes its StageHeader
// fields; warp 1's lanes copy the token scales of a few of the tile's rows each (rows past the expert's:
// zeros) and lanes 0 and 1 the weight scales, in a warp of their own so that neither loop of issues is on
// the path of the other's. The stage is full when the TMA bytes and the 32 lanes' copies have landed.
// A gather (row_index) loads the token tile with warp 0's 32 lanes instead of TMA (gather_rows), and the
// stage is full when their copies have landed too.
enum class Loads { kTiles, kScales };

// One operand tile of kRows rows at K block kb, row `row`, into `dst`: all of it for this CTA, or, when
// kShared (the operand a 2-CTA pair shares), this CTA's half of it into the same stage of both CTAs.
template <bool kShared, int kRows>
__device__ __forceinline__ void load_box(const CUtensorMap* map, uint64_t* bar, uint64_t hint, uint8_t* dst,
                                         int kb, int row, int rank) {
  if constexpr (kShared) {
    constexpr int kHalf = kRows / 2;
    static_assert(kHalf % 8 == 0, "each half starts on a whole 1024-byte swizzle atom");
    cute::SM90_TMA_LOAD_MULTICAST_2D::copy(map, bar, uint16_t(0b11), hint, dst + rank * kHalf * kBlockK,
                                           kb * kBlockK, row + rank * kHalf);
  } else {
    cute::SM90_TMA_LOAD_2D::copy(map, bar, hint, dst, kb * kBlockK, row);
  }
}

// The token tile of K block kb, gathered: tile row r is row rows[r / 32] (held by lane r % 32) of a, -1
// for rows past the expert's (zeros), placed as TMA's 128-byte swizzle places it (chunk c of row r at
// r * 128 + (c ^ r % 8) * 16 in the 1024-byte aligned tile). Each copy instruction of the warp moves four
// whole 128-byte rows (lane l: 16-byte chunk l % 8 of row 4j + l / 8), so that its reads are four lines.
// K past k (the last block of a k that is not a multiple of 128) reads as zeros, as TMA's fill. The rows
// are kept in the L2 (evict-last): each is read once for every expert its token is routed to (topk
// times, by tiles far apart in time), while the weight tiles streamed between those reads would push
// them out first under the default policy.
template <int kRows>
__device__ __forceinline__ void gather_rows(const Params& p, const int (&rows)[(kRows + 31) / 32], uint8_t* tile,
                                            int kb, int lane) {
  static_assert(kRows % 8 == 0, "whole 1024-byte swizzle atoms");
  const int chunk = lane % 8;
  const int col = kb * kBlockK + chunk * 16;
  const bool col_ok = col < p.k;  // k is a multiple of 16: a chunk is all in or all out
#pragma unroll
  for (int j = 0; j < kRows / 4; ++j) {
    const int r = 4 * j + lane / 8;
    const int row = __shfl_sync(0xffffffffu, rows[4 * j / 32], 4 * j % 32 + lane / 8);
    copy16_async(tile + r * kBlockK + ((chunk ^ (r & 7)) << 4), p.a + int64_t(row < 0 ? 0 : row) * p.k + col,
                 row >= 0 && col_ok, uint64_t(cute::TMA::CacheHintSm90::EVICT_LAST));
  }
}

template <class M, class K, Loads kPart, bool kGather>
__device__ __forceinline__ void load_tile(const Params& p, const Smem<M>& s, const Tile& tile,
                                          int rank, int lane, int& stage, uint32_t& phase) {
  // L2 policy. Swap-AB kinds (experts of at most a few dozen tokens, one chunk): the token chunk is read
  // once per weight tile (kept), each weight tile once (streamed). Tokens x weights kinds: both are
  // reused across the waves of an expert, with no hint (kept token chunks would pile up over the waves
  // and push out the weight tiles that the next wave reads again).
  constexpr uint64_t kTokenHint = uint64_t(K::kSwapAB ? cute::TMA::CacheHintSm90::EVICT_LAST
                                                      : cute::TMA::CacheHintSm90::EVICT_NORMAL);
  constexpr uint64_t kWeightHint = uint64_t(K::kSwapAB ? cute::TMA::CacheHintSm90::EVICT_FIRST
                                                       : cute::TMA::CacheHintSm90::EVICT_NORMAL);
  constexpr int kScaleRowsPerLane = (K::kTokenRows + 31) / 32;
  constexpr int kWeightScales = K::kTwoWeightScales ? 2 : 1;
  const int kind = tile.kind;
  // Row of b seen as (E * n, k); < 2^31 (host), also for a pair's spare tile (col0 < n + weight rows).
  const int weight_row = tile.expert * p.n + tile.col0;
  // This lane's token scale rows r = lane, lane + 32, ...: one pointer per row, at block kb of row row0 + r,
  // advanced by a_scale_k_stride per K block (the loop is this warp's critical path: no index arithmetic in
  // it; MN-major scales put the warp's 32 rows side by side: one 128-byte line per copy instruction), and
  // whether the row belongs to the expert (else the copy reads nothing and writes zeros).
  // A gather's rows come from row_index (rows past the expert's: -1, read as zeros); warp 0 keeps them for
  // gather_rows.
  const float* scale_src[kScaleRowsPerLane];
  bool scale_valid[kScaleRowsPerLane];
  int a_rows[kScaleRowsPerLane];
#pragma unroll
  for (int i = 0; i < kScaleRowsPerLane; ++i) {
    const int row = tile.row0 + lane + 32 * i;
    scale_valid[i] = lane + 32 * i < tile.rows;
    a_rows[i] = !kGather ? row : scale_valid[i] ? p.row_index[row] : -1;
    scale_src[i] = p.a_scale + int64_t(a_rows[i] < 0 ? 0 : a_rows[i]) * p.a_scale_row_stride;
  }
  // Lanes 0 and 1: the weight scales of the tile's first and second 128-row block, likewise (blocks
  // past n, of a second block that the kind does not have or of a pair's spare tile: zeros).
  const int n_blocks = (p.n + kScaleBlock - 1) / kScaleBlock;
  const int weight_block = tile.col0 / kScaleBlock + lane;
  const float* weight_scale_src = p.b_scale + (int64_t(tile.expert) * n_blocks + weight_block) * p.k_blocks;
  const int64_t scale_step = p.a_scale_k_stride;
  const bool weight_scale_valid = weight_block < n_blocks;
  for (int kb = 0; kb < p.k_blocks; ++kb) {
    s.empty[stage].wait(phase ^ 1);
    uint64_t* bar = reinterpret_cast<uint64_t*>(&s.full[stage]);
    if (kPart == Loads::kTiles && lane == 0 && kb == 0)  // before the arrival that releases it
      store_shared_int2(&s.header(stage)->kind, kind, (kScaleBlock - tile.col0 % kScaleBlock) / 8);
    uint8_t* m_tile = s.m + stage * M::kMBytes;
    uint8_t* n_tile = s.n + stage * M::kNBytes;
    uint8_t* token_tile = K::kSwapAB ? n_tile : m_tile;
    if (kPart == Loads::kTiles && lane == 0 && ablated(kAblateTmaLoads)) {
      s.full[stage].arrive();  // the stage completes without its bytes
    } else if (kPart == Loads::kTiles && lane == 0) {
      s.full[stage].arrive_and_expect_tx(kGather ? K::kWeightBytes : K::kTxBytes);
      if (!kGather)
        load_box<M::template kMulticastTokens<K>, K::kTokenRows>(&p.tokens[kind], bar, kTokenHint, token_tile, kb,
                                                                 tile.row0, rank);
      load_box<M::template kMulticastWeights<K>, K::kWeightRows>(&p.weights[kind], bar, kWeightHint,
                                                                 K::kSwapAB ? m_tile : n_tile, kb, weight_row, rank);
    }
    if (kPart == Loads::kTiles && kGather) {
      gather_rows<K::kTokenRows>(p, a_rows, token_tile, kb, lane);
      arrive_when_copied(bar);
    }
    if constexpr (kPart == Loads::kScales) {
      float* ts = s.token_scales(stage);
#pragma unroll
      for (int i = 0; i < kScaleRowsPerLane; ++i) {
        if (lane + 32 * i < K::kTokenRows && !ablated(kAblateScaleCopies))
          copy_float_async(ts + lane + 32 * i, scale_src[i], scale_valid[i]);
        scale_src[i] += scale_step;
      }
      if (lane < kWeightScales && !ablated(kAblateScaleCopies))
        copy_float_async(s.header(stage)->weight_scale + lane, weight_scale_src++, weight_scale_valid);
      arrive_when_copied(bar);
    }
    if (++stage == M::kStages) stage = 0, phase ^= 1;
  }
}

// The tile's StageHeader fields, from its first stage (the math's wait acquires them).
template <class M>
__device__ __forceinline__ void read_header(const Smem<M>& s, int stage, uint32_t phase, int& kind,
                                            int& first_block_groups) {
  s.full[stage].wait(phase);
  const int2 header = load_shared_int2(&s.header(stage)->kind);
  kind = header.x, first_block_groups = header.y;
}

// The math warp groups' work on the CTA's tiles from number `index` on, while they are of kind K (`kind`):
// per tile the K loop (WGMMA, promotion), then the staging of the result for the store warps. On return
// `index` is the next tile's number, and `kind` and `first_block_groups` its header fields (read when it
// exists). Kinds with one accumulator (k_stream) stage a finished tile under the WGMMAs of the next
// tile's first K block when the next tile is of the same kind.
template <class M, class K, bool kGather>
__device__ __forceinline__ void compute_tiles(const Params& p, const Smem<M>& s, int& kind, int& first_block_groups,
                                              int& stage, uint32_t& phase, int& index, int tiles) {
  constexpr int N = K::kTileN;
  const int tid = threadIdx.x;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int lane = tid % 32;
  const int row_in_wg = (tid / 32) % 4 * 16 + lane / 4;  // accumulator rows row_in_wg and row_in_wg + 8
  const int col_in_8 = 2 * (lane % 4);                    // accumulator columns 8j + col_in_8 (+1)
  float acc[N / 2], sum[N / 2];

  // The scales of one K block as the promotion uses them (read from the block's stage): per accumulator
  // row the token scale times the weight scale of the tile's first (and second) weight scale block, or,
  // swap-AB, per column the token scales.
  // Tokens x weights kinds whose tiles may span two weight scale blocks: the tile's columns in units of
  // gcd(TileN, 128) (tiles start at multiples of TileN, so no unit straddles two blocks), each unit in the
  // tile's first block or its second (first_block_groups: the columns in the first, in groups of 8).
  constexpr int kUnitCols = K::kTwoWeightScales ? gcd(N, kScaleBlock) : N;
  constexpr int kUnits = N / kUnitCols;
  struct BlockScales {
    float row[kUnits][2];  // per unit of columns: the scales of the thread's two accumulator rows
    float2 col[K::kSwapAB ? N / 8 : 1];
    float weight;
  };
  auto block_scales = [&](int st) {
    BlockScales bs;
    if (ablated(kAblateScaleReads)) {
      bs.weight = 1.f;
      for (auto& r : bs.row) r[0] = r[1] = 1.f;
      for (auto& c : bs.col) c = make_float2(1.f, 1.f);
      return bs;
    }
    bs.weight = s.header(st)->weight_scale[0];
    const float weight_hi = K::kTwoWeightScales ? s.header(st)->weight_scale[1] : 0.f;
    const float* ts = s.token_scales(st);
    if constexpr (K::kSwapAB) {
#pragma unroll
      for (int j = 0; j < N / 8; ++j) bs.col[j] = make_float2(ts[8 * j + col_in_8], ts[8 * j + col_in_8 + 1]);
    } else {
      const float t0 = ts[wg * 64 + row_in_wg], t1 = ts[wg * 64 + row_in_wg + 8];
#pragma unroll
      for (int u = 0; u < kUnits; ++u) {  // one select per unit and K block
        const float w = K::kTwoWeightScales && u * kUnitCols >= 8 * first_block_groups ? weight_hi : bs.weight;
        bs.row[u][0] = t0 * w, bs.row[u][1] = t1 * w;
      }
    }
    return bs;
  };
  // The stage is free: in a 2-CTA mode for both CTAs' producers (lane r arrives on CTA r's barrier).
  auto release = [&](int st) {
    if constexpr (M::kCluster == 1) {
      if (lane == 0) s.empty[st].arrive();
    } else {
      if (lane < M::kCluster) s.empty[st].arrive(uint32_t(lane));
    }
  };
  // Promotion of the product `a`'s column groups [J0, J1): sum += (token scale * weight scale) * product.
  bool promote_now = true;  // false only under kAblatePromotion, before a tile's last K block
  auto promote_groups = [&](const float* a, auto j0, auto j1, const BlockScales& bs) {
    constexpr int J0 = decltype(j0)::value, J1 = decltype(j1)::value;
    if (ablated(kAblateMath) || !promote_now) return;
#pragma unroll
    for (int j = J0; j < J1; ++j) {
      if constexpr (K::kSwapAB) {
        const float s0 = bs.col[j].x * bs.weight, s1 = bs.col[j].y * bs.weight;
        sum[4 * j + 0] += s0 * a[4 * j + 0];
        sum[4 * j + 1] += s1 * a[4 * j + 1];
        sum[4 * j + 2] += s0 * a[4 * j + 2];
        sum[4 * j + 3] += s1 * a[4 * j + 3];
      } else {
        const float s0 = bs.row[j * 8 / kUnitCols][0], s1 = bs.row[j * 8 / kUnitCols][1];
        sum[4 * j + 0] += s0 * a[4 * j + 0];
        sum[4 * j + 1] += s0 * a[4 * j + 1];
        sum[4 * j + 2] += s1 * a[4 * j + 2];
        sum[4 * j + 3] += s1 * a[4 * j + 3];
      }
    }
  };
  using Zero = std::integral_constant<int, 0>;
  using AllGroups = std::integral_constant<int, N / 8>;
  // --- Epilogue: round the sum, stage it as [token][weight row] in smem for the store warps ----------
  // s.out is free once the store warps have copied the previous tile out (wait_store: there was one).
  auto stage_out = [&](bool wait_store) {
    if (wait_store && !ablated(kAblateStoreWait)) named_barrier_sync(kOutEmpty, M::kMathThreads + M::kStoreThreads);
    using Pack = Pack2<typename M::ElementD>;
    const int r0 = wg * 64 + row_in_wg;
    // kTmaStore: the swizzled chunk of column group j is (j % 8) ^ (r0 % 8), the same for rows r0 and r0 + 8.
    // Computed here (the empty asm): hoisted, the 8 chunk addresses would be held through the K loop.
    int swizzle = r0 & 7;
    if constexpr (K::kTmaStore) asm volatile("" : "+r"(swizzle));
    const uint32_t row_base = cute::cast_smem_ptr_to_uint(s.out + r0 * K::kOutRowPitch);
#pragma unroll
    for (int j = 0; j < N / 8 && (!ablated(kAblateStaging) || p.total_m < 0); ++j) {
      const int c = 8 * j + col_in_8;
      if constexpr (K::kSwapAB) {  // rows are weight rows, columns tokens: transpose while staging
        s.out[K::out_offset(c, r0)] = Pack::one(sum[4 * j + 0]);
        s.out[K::out_offset(c + 1, r0)] = Pack::one(sum[4 * j + 1]);
        s.out[K::out_offset(c, r0 + 8)] = Pack::one(sum[4 * j + 2]);
        s.out[K::out_offset(c + 1, r0 + 8)] = Pack::one(sum[4 * j + 3]);
      } else {
        const int col = K::kTmaStore ? (j / 8) * K::kTokenRows * 64 + (((j % 8) ^ swizzle) << 3) + col_in_8 : c;
        Pack::store2(row_base + 2 * col, sum[4 * j + 0], sum[4 * j + 1]);
        Pack::store2(row_base + 2 * (col + 8 * K::kOutRowPitch), sum[4 * j + 2], sum[4 * j + 3]);
      }
    }
    if constexpr (K::kTmaStore) cute::tma_store_fence();  // visible to the TMA stores (the async proxy)
    named_barrier_arrive(kOutFull, M::kMathThreads + M::kStoreThreads);  // its staged values are written
  };
  auto zero_sum = [&]() {
#pragma unroll
    for (int i = 0; i < N / 2; ++i) sum[i] = 0.f;
  };
  // The K loop of kinds without room for a second accumulator (one accumulator and its sum). A math
  // warp group's critical path runs from one block's last WGMMA wait to its next block's WGMMAs; the
  // tensor cores stay busy only while that path is shorter than the other math warp groups' WGMMAs.
  // With two math warp groups that is one group's WGMMAs (384 cycles for N = 192), so each block's
  // product is two WGMMA groups of N / 2 columns (the same accumulator registers, in the same layout as
  // one N-wide WGMMA's): the first half is promoted while the second half's WGMMAs run (wait<1>), and
  // only the second half's promotion is on the path. With three, the two other groups' WGMMAs cover the
  // whole promotion, and one N-wide group per block issues half the WGMMAs. Whether the next stage has
  // landed is asked (test_wait: it never suspends the warp) right after the last WGMMA wait, its answer
  // coming back under the promotion.
  // k_stream runs consecutive tiles of kind K: a finished tile is staged right after the next tile's first
  // WGMMAs are issued, under them (the tile transition otherwise leaves the tensor cores idle: both warp
  // groups reach it together). Each block's WGMMAs are waited for before the loop's back edge: ptxas
  // serializes WGMMAs in flight across one.
  constexpr int kParts = M::kMathWGs >= 3 ? 1 : 2;
  constexpr int kPart = N / kParts;
  static_assert(kPart % 8 == 0, "WGMMA groups of whole 8-column groups");
  // The operand tiles of stage `st` (this warp group's 64 rows of the A side) as WGMMA descriptors.
  auto desc_m = [&](int st) { return smem_desc_k_major_sw128(s.m + st * M::kMBytes + wg * 64 * kBlockK); };
  auto desc_n = [&](int st) { return smem_desc_k_major_sw128(s.n + st * M::kNBytes); };
  // A gather's token tile was written by the producer's cp.async (the generic proxy) and is read by the
  // WGMMAs (the async proxy): after the stage's barrier, a proxy fence before they are issued.
  auto after_landed = [&]() {
    if constexpr (kGather) cutlass::arch::fence_view_async_shared();
  };
  // One K block's WGMMAs on the stage `st`, into acc (k_stream: kParts commit groups).
  auto issue_stage = [&](int st) {
    after_landed();
    issue_block<N, kParts>(desc_m(st), desc_n(st), acc);
  };
  // The rest of a K block after its WGMMAs were issued on stage block_stage: the waits and the promotion.
  // kSplit: the first half promoted while the second half's WGMMAs run (two WGMMA groups per block).
  auto finish_block = [&](int block_stage, const BlockScales& bs, bool& landed, auto split) {
    constexpr bool kSplit = decltype(split)::value && kParts == 2;
    constexpr int kFrom = kSplit ? kPart / 2 : 0;  // the first accumulator register promoted after wait<0>
    if constexpr (kSplit) {
#pragma unroll
      for (int i = 0; i < kFrom; ++i) cute::warpgroup_fence_operand(acc[i]);
      cute::warpgroup_wait<1>();
#pragma unroll
      for (int i = 0; i < kFrom; ++i) cute::warpgroup_fence_operand(acc[i]);
      promote_groups(acc, Zero{}, std::integral_constant<int, kFrom / 4>{}, bs);
      // (done before the second half's wait: the compiler would otherwise sink it there)
#pragma unroll
      for (int i = 0; i < kFrom; ++i) cute::warpgroup_fence_operand(sum[i]);
    }
#pragma unroll
    for (int i = kFrom; i < N / 2; ++i) cute::warpgroup_fence_operand(acc[i]);
    cute::warpgroup_wait<0>();
#pragma unroll
    for (int i = kFrom; i < N / 2; ++i) cute::warpgroup_fence_operand(acc[i]);
    release(block_stage);
    // past a tile's last block: a question about the next tile's first stage
    landed = s.full[stage].test_wait(phase);
    promote_groups(acc, std::integral_constant<int, kFrom / 4>{}, AllGroups{}, bs);
  };
  auto k_stream = [&]() {
    const int this_kind = kind;
    bool landed = s.full[stage].test_wait(phase);
    bool staging = false;  // the previous tile's sum waits to be staged
    zero_sum();
    for (;;) {
      // The tile's first block: the previous tile is staged under its WGMMAs (and the one before that
      // was copied out by the store warps unless the previous tile was the first); one wait (beside the
      // staging the split's registers do not fit).
      if (ablated(kAblatePromotion)) promote_now = p.k_blocks == 1;
      if (!landed) s.full[stage].wait(phase);
      issue_stage(stage);
      int block_stage = stage;
      if (++stage == M::kStages) stage = 0, phase ^= 1;
      if (staging) {
        stage_out(index > 1);
        zero_sum();
      }
      finish_block(block_stage, block_scales(block_stage), landed, std::false_type{});
      for (int kb = 1; kb < p.k_blocks; ++kb) {
        if (ablated(kAblatePromotion)) promote_now = kb + 1 == p.k_blocks;
        if (!landed) s.full[stage].wait(phase);
        issue_stage(stage);
        block_stage = stage;
        if (++stage == M::kStages) stage = 0, phase ^= 1;
        finish_block(block_stage, block_scales(block_stage), landed, std::true_type{});
      }
      // The tile is done: stage it now if no tile of this kind follows, else under the next one's first block.
      const bool next = ++index < tiles;
      if (next) read_header(s, stage, phase, kind, first_block_groups);
      if (!next || kind != this_kind) {
        stage_out(index > 1);
        return;
      }
      landed = true;
      staging = true;
    }
  };
  // The K loop of kinds whose two accumulators and sum fit the registers (3 x N / 2 floats): each math
  // warp group keeps its next K block's WGMMAs on the tensor cores while it promotes the previous block's
  // product (wait<1>). ptxas keeps such a pipeline only in straight-line code (it serializes the WGMMAs
  // when a group is in flight across a loop's back edge), so the blocks run in chunks of up to kChunk,
  // unrolled, each ending with wait<0>.
  constexpr int kChunk = 4;
  float acc2[2][N / 2];
  auto promote = [&](const float* a, int st) {
    const BlockScales bs = block_scales(st);
    release(st);  // the stage's scales are in registers
    promote_groups(a, Zero{}, AllGroups{}, bs);
  };
  auto pipelined_loop = [&]() {
    auto chunk = [&](auto chunk_blocks) {
      constexpr int C = decltype(chunk_blocks)::value;
      int st[C];
#pragma unroll
      for (int c = 0; c <= C; ++c) {
        if (c < C) {
          float* a = acc2[c & 1];
          st[c] = stage;
          s.full[stage].wait(phase);
          after_landed();
          issue_block<N, 1>(desc_m(stage), desc_n(stage), a);
          if (++stage == M::kStages) stage = 0, phase ^= 1;
        }
        if (c > 0) {
          float* a = acc2[(c - 1) & 1];
#pragma unroll
          for (int i = 0; i < N / 2; ++i) cute::warpgroup_fence_operand(a[i]);
          if (c < C) cute::warpgroup_wait<1>(); else cute::warpgroup_wait<0>();
#pragma unroll
          for (int i = 0; i < N / 2; ++i) cute::warpgroup_fence_operand(a[i]);
          promote(a, st[c - 1]);
        }
      }
    };
    for (int kb0 = 0; kb0 < p.k_blocks; kb0 += kChunk) {
      const int left = p.k_blocks - kb0;
      if (left >= kChunk) chunk(std::integral_constant<int, kChunk>{});
      else if (left == 3) chunk(std::integral_constant<int, 3>{});
      else if (left == 2) chunk(std::integral_constant<int, 2>{});
      else chunk(std::integral_constant<int, 1>{});
    }
  };
  // two accumulators and the sum, and about 40 registers for addresses, scales and the loop
  constexpr bool kPipelined = 3 * (N / 2) + 40 <= M::kMathRegisters;
  if constexpr (kPipelined) {
    zero_sum();
    pipelined_loop();
    stage_out(index > 0);
    if (++index < tiles) read_header(s, stage, phase, kind, first_block_groups);
  } else {
    k_stream();
  }
}

// The store warps' work on one staged tile: the expert's rows and the columns below n. A full tile of a
// kTmaStore kind leaves by TMA stores, one per 64-column atom, issued by the first store thread (TMA clips
// the columns past n), which waits until they have read the staging buffer; other tiles (an expert's last
// token chunk, whose box would run into the next expert's rows; swap-AB kinds) by 16-byte stores, a warp
// storing 32 / chunks rows at a time (chunks: 16-byte pieces of a staged row), lane by lane.
template <class M, class K>
__device__ __forceinline__ void store_tile(const Params& p, const Smem<M>& s, const Tile& tile, int thread) {
  constexpr int kChunks = K::kWeightRows / 8;
  static_assert(kChunks <= 32, "a staged row is at most one warp of 16-byte chunks");
  constexpr int kRowsPerWarp = 32 / kChunks;
  constexpr int kRowsPerPass = kRowsPerWarp * (M::kStoreThreads / 32);
  const int lane = thread % 32, chunk = lane % kChunks;
  const int col = tile.col0 + chunk * 8;
  if (ablated(kAblateStores)) return;
  if constexpr (K::kTmaStore) {
    if (tile.rows == K::kTokenRows) {
      if (thread == 0) {
#pragma unroll
        for (int atom = 0; atom < K::kWeightRows / 64; ++atom) {
          if (tile.col0 + atom * 64 < p.n)
            cute::SM90_TMA_STORE_2D::copy(&p.outs[tile.kind], s.out + atom * K::kTokenRows * 64,
                                          tile.col0 + atom * 64, tile.row0);
        }
        cute::tma_store_arrive();
        cute::tma_store_wait<0>();  // the staging buffer has been read
      }
      return;
    }
  }
  if (lane >= kRowsPerWarp * kChunks || col >= p.n) return;
  for (int r = thread / 32 * kRowsPerWarp + lane / kChunks; r < tile.rows; r += kRowsPerPass) {
    const uint4 v = *reinterpret_cast<const uint4*>(s.out + K::out_offset(r, chunk * 8));
    *reinterpret_cast<uint4*>(p.out + (int64_t(tile.row0 + r) * p.n + col) * 2) = v;
  }
}

// kGather: the token tiles gathered by row_index (gather_rows), a compile-time choice so that the kernel
// without it keeps its producer's registers (at 40 each, the gather's spilled there).
template <class M, bool kGather>
__global__ void __launch_bounds__(M::kThreads, 1) grouped_gemm_kernel(const __grid_constant__ Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(CUTE_ARCH_MMA_SM90A_ENABLED)
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // Round up to 1024 bytes by an offset from smem_raw, so that the compiler keeps the shared address
  // space (ld/st.shared rather than generic accesses).
  const Smem<M> s(smem_raw + ((1024 - (cute::cast_smem_ptr_to_uint(smem_raw) & 1023)) & 1023));

  if (threadIdx.x == M::kMathThreads) {
    for (int i = 0; i < M::kNumKinds; ++i) {
      if (!kGather)  // a gather's token maps are not encoded
        cute::prefetch_tma_descriptor(reinterpret_cast<const cute::TmaDescriptor*>(&p.tokens[i]));
      cute::prefetch_tma_descriptor(reinterpret_cast<const cute::TmaDescriptor*>(&p.weights[i]));
    }
    for (int i = 0; i < M::kStages; ++i) {
      // the producer's arrive_and_expect_tx and its 32 lanes' scale copies (and, a gather, row copies)
      s.full[i].init(1 + 32 + (kGather ? 32 : 0));
      s.empty[i].init(M::kCluster * M::kMathThreads / 32);  // one arrival per math warp of each CTA
    }
    cutlass::arch::fence_barrier_init();
  }
  const int total_tiles = build_schedule<M>(p, s.sched, s.warp_sums);  // ends with __syncthreads
  // Both CTAs' barriers are initialized before either producer multicasts or math arrives remotely.
  if constexpr (M::kCluster > 1) cute::cluster_sync();
  // The cluster's tiles: first, first + step, ... (a cluster tile is one tile per CTA of the cluster).
  const int rank = M::kCluster > 1 ? int(cute::block_rank_in_cluster()) : 0;
  const int first = blockIdx.x / M::kCluster, step = gridDim.x / M::kCluster;
  int stage = 0;
  uint32_t phase = 0;

  if (threadIdx.x >= M::kMathThreads) {
    // --- Producer warp group: warps 0 and 1 load every stage (the tiles, the token scales), 2-3 store ---
    cutlass::arch::warpgroup_reg_dealloc<M::kProducerRegisters>();
    if (threadIdx.x < M::kMathThreads + 64) {
      const int lane = threadIdx.x % 32;
      const bool tiles = threadIdx.x < M::kMathThreads + 32;
      for (int t = first; t < total_tiles; t += step) {
        const Tile tile = s.sched.template decode<M>(p, t, rank);
        with_kind<M>(tile.kind, [&](auto k) {
          if (tiles) load_tile<M, decltype(k), Loads::kTiles, kGather>(p, s, tile, rank, lane, stage, phase);
          else load_tile<M, decltype(k), Loads::kScales, kGather>(p, s, tile, rank, lane, stage, phase);
        });
      }
      // In a 2-CTA mode the other CTA's math arrives on this CTA's barriers: wait for its last releases
      // of every stage, so that none lands after this CTA has exited.
      if (M::kCluster > 1 && tiles) {
        for (int i = 0; i < M::kStages; ++i) {
          s.empty[stage].wait(phase ^ 1);
          if (++stage == M::kStages) stage = 0, phase ^= 1;
        }
      }
    } else {
      // --- Store warps: copy each staged tile to out, then free the staging buffer ---------------------
      const int thread = threadIdx.x - (M::kMathThreads + 64);
      for (int t = first; t < total_tiles; t += step) {
        const Tile tile = s.sched.template decode<M>(p, t, rank);
        named_barrier_sync(kOutFull, M::kMathThreads + M::kStoreThreads);
        with_kind<M>(tile.kind, [&](auto k) { store_tile<M, decltype(k)>(p, s, tile, thread); });
        if constexpr (M::kTmaStores) __syncwarp();  // (bar.arrive is a warp's, all lanes together)
        // the math waits for this only before it stages a next tile
        if (t + step < total_tiles && !ablated(kAblateStoreWait))
          named_barrier_arrive(kOutEmpty, M::kMathThreads + M::kStoreThreads);
      }
      if (M::kTmaStores && thread == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");  // the TMA stores are done
    }
  } else {
    // --- Math warp groups ------------------------------------------------------------------------------
    cutlass::arch::warpgroup_reg_alloc<M::kMathRegisters>();
    // Everything a tile needs comes with its stages (StageHeader): the math decodes no tile.
    const int tiles = first < total_tiles ? (total_tiles - first + step - 1) / step : 0;
    int kind = 0, first_block_groups = 0;
    if (tiles > 0) read_header(s, stage, phase, kind, first_block_groups);
    for (int index = 0; index < tiles;) {
      with_kind<M>(kind, [&](auto k) {
        compute_tiles<M, decltype(k), kGather>(p, s, kind, first_block_groups, stage, phase, index, tiles);
      });
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime's driver entry point: the library links no libcuda.
inline EncodeTiled encoder() {
  static EncodeTiled fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      ptr = nullptr;
    return reinterpret_cast<EncodeTiled>(ptr);
  }();
  return fn;
}

// A 2-D tensor map: `rows` rows of `cols` elements (row pitch `pitch_bytes`), boxes of box_cols x box_rows.
inline const char* encode_2d(CUtensorMap* map, CUtensorMapDataType type, const void* base, uint64_t cols,
                             uint64_t rows, uint64_t pitch_bytes, uint32_t box_cols, uint32_t box_rows,
                             CUtensorMapSwizzle swizzle) {
  EncodeTiled encode = encoder();
  if (!encode) return "cuTensorMapEncodeTiled is not available from the driver";
  const cuuint64_t dims[2] = {cols, rows};
  const cuuint64_t strides[1] = {pitch_bytes};
  const cuuint32_t box[2] = {box_cols, box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  CUresult r = encode(map, type, 2, const_cast<void*>(base), dims, strides, box, elem_strides,
                      CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? nullptr : "cuTensorMapEncodeTiled refused a tensor map";
}

template <class M>
struct GroupedGemm {
  static constexpr bool kSwapAB = false;  // not read for native kernels (no per-expert arrays)
  static constexpr bool kNative = true;

  static size_t workspace_bytes(int, int) { return 0; }  // no CUTLASS workspace: tensor maps are kernel params

  // Per kind I: its two tensor maps and its bucket bound; adds to `bound` its most tiles,
  // (ceil(total_m / token rows) + E) x weight tiles.
  template <int I = 0>
  static const char* encode_kinds(Params& p, const LaunchArgs& la, int64_t& bound) {
    if constexpr (I == M::kNumKinds) {
      return nullptr;
    } else {
      using K = typename M::template KindAt<I>;
      const NativeArgs& na = la.native;
      // the operand a 2-CTA pair shares: each CTA loads half of its tile (load_box)
      constexpr int kTokenBoxRows = M::template kMulticastTokens<K> ? K::kTokenRows / 2 : K::kTokenRows;
      constexpr int kWeightBoxRows = M::template kMulticastWeights<K> ? K::kWeightRows / 2 : K::kWeightRows;
      // (a gather loads its token tiles without TMA: gather_rows)
      const char* err = na.row_index ? nullptr
                                     : encode_2d(&p.tokens[I], CU_TENSOR_MAP_DATA_TYPE_UINT8, na.a, na.k, na.total_m,
                                                 na.k, kBlockK, kTokenBoxRows, CU_TENSOR_MAP_SWIZZLE_128B);
      if (!err)
        err = encode_2d(&p.weights[I], CU_TENSOR_MAP_DATA_TYPE_UINT8, na.b, na.k, uint64_t(la.num_experts) * na.n,
                        na.k, kBlockK, kWeightBoxRows, CU_TENSOR_MAP_SWIZZLE_128B);
      if (!err && K::kTmaStore)
        err = encode_2d(&p.outs[I], CU_TENSOR_MAP_DATA_TYPE_UINT16, na.out, na.n, na.total_m, na.n * 2, 64,
                        K::kTokenRows, CU_TENSOR_MAP_SWIZZLE_128B);
      if (err) return err;
      p.max_tokens[I] = na.max_tokens[I];
      bound += ((na.total_m + K::kTokenRows - 1) / K::kTokenRows + la.num_experts) *
               ((na.n + K::kWeightRows - 1) / K::kWeightRows);
      return encode_kinds<I + 1>(p, la, bound);
    }
  }

  static const char* run(const LaunchArgs& la) {
    const NativeArgs& na = la.native;
    if (la.num_experts > kMaxExperts) return "too many experts for the native kernels";
    if (na.num_buckets != M::kNumKinds) return "the mode's bucket count differs from its kernel's tile kinds";
    if (na.row_index && M::kSharesTokens) return "this mode's 2-CTA tiles share token tiles: it gathers no rows";
    if (na.row_index && !kGathers) return "gathered rows are compiled for bfloat16 output only";
    Params p{};
    int64_t bound = 0;  // CTAs beyond the number of tiles would have nothing to do
    if (const char* err = encode_kinds(p, la, bound)) return err;
    p.a = static_cast<const uint8_t*>(na.a);
    p.row_index = na.row_index;
    p.a_scale = na.a_scale;
    p.a_scale_row_stride = na.a_scale_ld ? 1 : (na.k + kBlockK - 1) / kBlockK;
    p.a_scale_k_stride = na.a_scale_ld ? na.a_scale_ld : 1;
    p.b_scale = na.b_scale;
    p.out = static_cast<uint8_t*>(na.out);
    p.expert_rows = na.expert_rows;
    p.total_m = int(na.total_m), p.n = int(na.n), p.k = int(na.k), p.num_experts = la.num_experts;
    p.k_blocks = (p.k + kBlockK - 1) / kBlockK;
    if constexpr (kGathers) {
      if (na.row_index) return launch<true>(la, p, bound);
    }
    return launch<false>(la, p, bound);
  }

  // The MoE layer's first GEMM, the one that gathers, writes bfloat16: the kernels that gather are
  // compiled for that output only.
  static constexpr bool kGathers = std::is_same_v<typename M::ElementD, cutlass::bfloat16_t> && !M::kSharesTokens;

  template <bool kGather>
  static const char* launch(const LaunchArgs& la, const Params& p, int64_t bound) {
    auto kernel = grouped_gemm_kernel<M, kGather>;
    cudaLaunchConfig_t config{};
    config.blockDim = dim3(M::kThreads);
    config.dynamicSmemBytes = M::kSmemBytes;
    config.stream = la.stream;
    cudaLaunchAttribute cluster[1];
    cluster[0].id = cudaLaunchAttributeClusterDimension;
    cluster[0].val.clusterDim.x = M::kCluster, cluster[0].val.clusterDim.y = 1, cluster[0].val.clusterDim.z = 1;
    config.attrs = cluster;
    config.numAttrs = M::kCluster > 1 ? 1 : 0;

    // Per device and kernel, once: opt in to the shared memory and ask how many clusters can be resident
    // at once (not every GPC holds an even number of SMs), so that the persistent grid is one wave.
    static std::atomic<int> resident[kMaxDevices];  // clusters + 1; 0: not queried yet
    int clusters = la.device >= 0 && la.device < kMaxDevices ? resident[la.device].load(std::memory_order_relaxed) - 1 : -1;
    if (clusters < 0) {
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, M::kSmemBytes) != cudaSuccess)
        return cudaGetErrorString(cudaGetLastError());
      clusters = la.sm_count / M::kCluster;
      if (M::kCluster > 1) {
        config.gridDim = dim3(clusters * M::kCluster);
        if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess)
          return cudaGetErrorString(cudaGetLastError());
        if (clusters < 1) return "no cluster of the native kernel fits on an SM pair";
      }
      if (la.device >= 0 && la.device < kMaxDevices) resident[la.device].store(clusters + 1, std::memory_order_relaxed);
    }
    // bound counts single tiles: at least as many as cluster tiles
    config.gridDim = dim3(unsigned(bound < clusters ? bound : clusters) * M::kCluster);
    if (cudaLaunchKernelEx(&config, kernel, p) != cudaSuccess) return cudaGetErrorString(cudaGetLastError());
    return nullptr;
  }
};

}  // namespace es_dual::native

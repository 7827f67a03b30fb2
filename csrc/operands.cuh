// The two ways the library maps the MoE product onto a CUTLASS grouped GEMM, and the per-expert arrays
// the preparation kernel writes for them. Shared by the C API (which writes the arrays) and every kernel
// translation unit (which reads them), so both sides use one set of types.
//
// CUTLASS computes, per group, D (M x N) = A (M x K) . B (N x K)^T with A and B K-major.
//   normal  (SwapAB = false): A = tokens  (m x k), B = weights (n x k), D = out rows, row-major (m x n)
//   swapped (SwapAB = true) : A = weights (n x k), B = tokens  (m x k), D = out rows seen as n x m
//                             column-major, which is the same memory as row-major m x n.
// Scales keep the caller's layouts (no copy, no transpose): a_scale is (m, k/128) with K contiguous and
// b_scale[e] is (n/128, k/128) with K contiguous, i.e. both are K-major scale-factor tensors.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/detail/layout.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/layout/matrix.h"
#include "cutlass/numeric_types.h"
#include "cutlass/util/packed_stride.hpp"

#include "es_dual_limits.h"  // generated from es_dual/cutlass/buckets.py

namespace es_dual {

constexpr int kScaleBlock = 128;  // elements of K (and of weight N) per scale: the tensor contract
constexpr int kMaxBuckets = 8;    // upper bound on rows of one bucket table (checked by the generator)
constexpr int kMaxDevices = 64;   // per-device caches are arrays of this size

using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // (M, N, K) per group
using GroupShape = ProblemShape::UnderlyingProblemShape;

template <bool SwapAB>
struct Operands {
  using ElementA = cutlass::float_e4m3_t;
  using ElementB = cutlass::float_e4m3_t;
  using ElementScale = float;
  using LayoutA = cutlass::layout::RowMajor;     // M x K, K contiguous
  using LayoutB = cutlass::layout::ColumnMajor;  // (K x N in BLAS terms) = N x K, K contiguous
  using LayoutD = cute::conditional_t<SwapAB, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;

  // Scale granularity along the CUTLASS problem's (M, N, K): tokens have one scale per row, weights one
  // per 128 rows; both one per 128 of K.
  static constexpr int kScaleM = SwapAB ? kScaleBlock : 1;
  static constexpr int kScaleN = SwapAB ? 1 : kScaleBlock;
  using ScaleConfig = cutlass::detail::Sm90BlockwiseScaleConfig<kScaleM, kScaleN, kScaleBlock,
                                                                cute::GMMA::Major::K, cute::GMMA::Major::K>;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

  // Per-group strides of a grouped GEMM (layout tags given as pointers: one stride per group, L = 0).
  using StrideA = cute::remove_pointer_t<cutlass::detail::TagToStrideA_t<LayoutA*>>;
  using StrideB = cute::remove_pointer_t<cutlass::detail::TagToStrideB_t<LayoutB*>>;
  using StrideD = cute::remove_pointer_t<cutlass::detail::TagToStrideC_t<LayoutD*>>;
};

// Per-expert arrays (E entries each) in the workspace, for one orientation.
template <bool SwapAB>
struct GroupArrays {
  using Ops = Operands<SwapAB>;
  const typename Ops::ElementA** ptr_A;
  const typename Ops::ElementB** ptr_B;
  const float** ptr_SFA;
  const float** ptr_SFB;
  void** ptr_D;  // ElementD* for the kernel's output type
  typename Ops::StrideA* stride_A;
  typename Ops::StrideB* stride_B;
  typename Ops::StrideD* stride_D;
  typename Ops::LayoutSFA* layout_SFA;
  typename Ops::LayoutSFB* layout_SFB;

  // Lays the arrays out from `base` (nullptr: only measures) and returns the bytes they take.
  size_t carve(uint8_t* base, int num_experts) {
    size_t off = 0;
    take(ptr_A, base, off, num_experts), take(ptr_B, base, off, num_experts);
    take(ptr_SFA, base, off, num_experts), take(ptr_SFB, base, off, num_experts);
    take(ptr_D, base, off, num_experts);
    take(stride_A, base, off, num_experts), take(stride_B, base, off, num_experts);
    take(stride_D, base, off, num_experts);
    take(layout_SFA, base, off, num_experts), take(layout_SFB, base, off, num_experts);
    return off;
  }

 private:
  template <class T>
  static void take(T*& field, uint8_t* base, size_t& off, int num_experts) {
    off = (off + 15) / 16 * 16;
    field = base ? reinterpret_cast<T*>(base + off) : nullptr;
    off += sizeof(T) * size_t(num_experts);
  }
};

// Where each expert's rows are: the one reading of the per-expert rows tensor that every kernel shares.
//   contiguous (max_m == 0): rows[] holds E + 1 offsets; expert e owns [offs[e], offs[e + 1]), both clamped
//                            to [0, total_m], none when the end is below the start;
//   masked     (max_m > 0):  rows[] holds E counts; expert e owns [e * max_m, e * max_m + counts[e]), the
//                            count clamped to [0, max_m] (total_m = E * max_m).
struct ExpertRows {
  const void* rows;  // int32, or int64 with int64 = 1
  int int64;
  int64_t max_m;
  int64_t total_m;

  __host__ __device__ __forceinline__ bool masked() const { return max_m > 0; }

  __device__ __forceinline__ int64_t read(int i) const {
    return int64 ? static_cast<const int64_t*>(rows)[i] : int64_t(static_cast<const int32_t*>(rows)[i]);
  }

  __device__ __forceinline__ static int64_t clamp(int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

  // Contiguous: offsets[i] clamped to [0, total_m]. Masked: the end of expert i's rows.
  __device__ __forceinline__ int64_t bound(int i) const {
    return masked() ? int64_t(i) * max_m + clamp(read(i), max_m) : clamp(read(i), total_m);
  }

  // [lo, hi) of expert e, where bound_of(i) gives bound(i) (from global memory, or from a copy in shared
  // memory): contiguous, [bound(e), max(bound(e), bound(e + 1))); masked, [e * max_m, bound(e)).
  template <class BoundOf>
  __device__ __forceinline__ void range(int e, BoundOf bound_of, int64_t& lo, int64_t& hi) const {
    if (masked()) {
      lo = int64_t(e) * max_m, hi = bound_of(e);
    } else {
      lo = bound_of(e), hi = bound_of(e + 1);
      hi = hi > lo ? hi : lo;
    }
  }

  // How many bounds there are: E + 1 offsets, or E counts.
  __host__ __device__ __forceinline__ int bounds(int num_experts) const { return masked() ? num_experts : num_experts + 1; }
};

// The raw problem, as es_dual's own (native) kernels read it: they need no per-expert arrays.
struct NativeArgs {
  const void* a;            // (total_m, k) fp8
  const float* a_scale;     // (total_m, k blocks), as the caller gives it: K-major, or MN-major
  int64_t a_scale_ld;       // 0: K-major (a row's scales together); > 0: MN-major, block kb of row r at kb * ld + r
  const int32_t* row_index; // nullptr, or (total_m): row r reads row row_index[r] of a and a_scale (a gather)
  const void* b;            // (E, n, k) fp8
  const float* b_scale;     // (E, n blocks, k blocks)
  ExpertRows expert_rows;   // offsets (E + 1) or masked counts (E)
  void* out;                // (total_m, n), 2-byte elements
  int64_t total_m, n, k;
  int32_t num_buckets;             // the mode's buckets, one tile kind each, in routing order:
  int32_t max_tokens[kMaxBuckets]; // experts with max_tokens[i - 1] < m <= max_tokens[i]
};

// What the C API hands one kernel instantiation for one launch.
struct LaunchArgs {
  int num_experts;
  GroupShape* problem_sizes;  // device, E entries, masked for this bucket
  GroupArrays<false> normal;
  GroupArrays<true> swapped;
  void* workspace;            // this launch's CUTLASS workspace (tensor maps)
  int device;
  int sm_count;
  cudaStream_t stream;
  bool programmatic;          // launch with programmatic stream serialization (PDL)
  NativeArgs native;          // read by the native kernels only

  template <bool SwapAB>
  const GroupArrays<SwapAB>& arrays() const {
    if constexpr (SwapAB) return swapped; else return normal;
  }
};

// One compiled kernel instantiation, as the generated table lists it.
struct KernelEntry {
  const char* name;
  bool native;   // es_dual's own kernel (native_gemm.cuh): reads NativeArgs, no per-expert arrays
  bool swap_ab;
  size_t (*workspace_bytes)(int num_experts, int sm_count);
  const char* (*run)(const LaunchArgs& args);  // nullptr when launched, else a static error text
};

// The table entry of a kernel type G (grouped_gemm.cuh's CUTLASS kernels, native_gemm.cuh's own).
template <class G>
constexpr KernelEntry make_entry(const char* name) {
  return KernelEntry{name, G::kNative, G::kSwapAB, &G::workspace_bytes, &G::run};
}

struct BucketRow {
  const char* name;
  int32_t max_tokens;              // experts with previous.max_tokens < m <= max_tokens
  const KernelEntry* kernels[2];   // indexed by out_dtype
};

struct ModeTable {
  const char* name;
  int num_buckets;
  BucketRow buckets[kMaxBuckets];
  // A native mode runs all its buckets in one kernel (indexed by out_dtype; its buckets name it too);
  // nullptr: one CUTLASS grouped GEMM per bucket.
  const KernelEntry* fused[2];
};

}  // namespace es_dual

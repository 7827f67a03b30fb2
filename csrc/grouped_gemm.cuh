// One CUTLASS SM90 FP8 blockwise-scaled grouped GEMM, as a type built from template parameters
// (CUTLASS example 68 style). Every generated translation unit instantiates exactly one of these for
// one (tile, cluster, schedule, swap-AB, output type) row of es_dual/cutlass/buckets.py.
//
// The problem shapes live on the device only (the host never learns the per-expert token counts), so
// CUTLASS launches a persistent grid of one CTA per SM and its group tile scheduler walks the device
// shapes; experts masked out of this bucket have a zero token extent and own no tile.
#pragma once

#include <atomic>
#include <cstring>

#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/dispatch_policy.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "operands.cuh"

namespace es_dual {

using namespace cute;

// Kernel schedules by name (buckets.py `schedule`): mainloop policy and the matching epilogue policy.
struct Cooperative {
  using Mainloop = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise;
  using Epilogue = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
};
struct Pingpong {
  using Mainloop = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpongFP8Blockwise;
  using Epilogue = cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong;
};

template <int TileM, int TileN, int TileK, int ClusterM, int ClusterN, class Schedule, bool SwapAB,
          class ElementD_>
struct GroupedGemm {
  using Ops = Operands<SwapAB>;
  static constexpr bool kSwapAB = SwapAB;
  static constexpr bool kNative = false;

  using ElementA           = typename Ops::ElementA;                   // FP8 e4m3, K-major
  using ElementB           = typename Ops::ElementB;                   // FP8 e4m3, K-major
  using ElementC           = void;                                     // no source operand: D = acc
  using ElementD           = ElementD_;                                // bf16 or fp16
  using ElementAccumulator = float;                                    // also the block-scale type
  using LayoutA            = typename Ops::LayoutA;
  using LayoutB            = typename Ops::LayoutB;
  using LayoutD            = typename Ops::LayoutD;
  using LayoutSFA          = typename Ops::LayoutSFA;                  // K-major scales of A
  using LayoutSFB          = typename Ops::LayoutSFB;                  // K-major scales of B
  static constexpr int AlignmentA = 128 / cutlass::sizeof_bits<ElementA>::value;  // 16-byte TMA rows
  static constexpr int AlignmentB = 128 / cutlass::sizeof_bits<ElementB>::value;
  static constexpr int AlignmentD = 128 / cutlass::sizeof_bits<ElementD>::value;

  using ArchTag       = cutlass::arch::Sm90;
  using OperatorClass = cutlass::arch::OpClassTensorOp;
  using TileShape     = Shape<Int<TileM>, Int<TileN>, Int<TileK>>;   // CTA tile (M, N, K)
  using ClusterShape  = Shape<Int<ClusterM>, Int<ClusterN>, _1>;     // CTAs per cluster (M, N, K)

  // Epilogue: D = convert(acc). The block scales are already applied in the mainloop, so the epilogue
  // is the identity plus the rounding to ElementD (round to nearest even).
  using FusionOperation = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::epilogue::thread::Identity, ElementD,
                                             ElementAccumulator, cutlass::FloatRoundStyle::round_to_nearest>,
      cutlass::epilogue::fusion::Sm90AccFetch>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      ArchTag, OperatorClass,
      TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto,
      ElementAccumulator, ElementAccumulator,
      ElementC, LayoutD*, AlignmentD,                     // C: void (never read)
      ElementD, LayoutD*, AlignmentD,                     // D: one pointer and stride per group
      typename Schedule::Epilogue,
      FusionOperation
    >::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      ArchTag, OperatorClass,
      ElementA, cute::tuple<LayoutA*, LayoutSFA*>, AlignmentA,
      ElementB, cute::tuple<LayoutB*, LayoutSFB*>, AlignmentB,
      ElementAccumulator,
      TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Schedule::Mainloop
    >::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm       = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  // The preparation kernel writes the arrays with Operands<SwapAB>'s types: they must be the kernel's.
  static_assert(cute::is_same_v<typename GemmKernel::InternalStrideA, typename Ops::StrideA>);
  static_assert(cute::is_same_v<typename GemmKernel::InternalStrideB, typename Ops::StrideB>);
  static_assert(cute::is_same_v<typename GemmKernel::InternalStrideD, typename Ops::StrideD>);
  static_assert(CollectiveMainloop::ScaleGranularityM == Ops::kScaleM);
  static_assert(CollectiveMainloop::ScaleGranularityN == Ops::kScaleN);
  static_assert(CollectiveMainloop::ScaleGranularityK == kScaleBlock);
  // K-major scale factors: the mainloop derives its gmem scale layout from this, not from the arrays.
  static_assert(!CollectiveMainloop::MMajorSFA && !CollectiveMainloop::NMajorSFB);

  static typename Gemm::Arguments arguments(const LaunchArgs& la, int max_active_clusters) {
    const GroupArrays<SwapAB>& g = la.template arrays<SwapAB>();
    cutlass::KernelHardwareInfo hw_info;
    hw_info.device_id = la.device;
    hw_info.sm_count = la.sm_count;
    hw_info.max_active_clusters = max_active_clusters;
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGrouped,
        // host problem shapes: nullptr, the scheduler reads the device copy
        {la.num_experts, la.problem_sizes, nullptr},
        {g.ptr_A, g.stride_A, g.ptr_B, g.stride_B, g.ptr_SFA, g.layout_SFA, g.ptr_SFB, g.layout_SFB},
        {{}, nullptr, g.stride_D, reinterpret_cast<ElementD**>(g.ptr_D), g.stride_D},
        hw_info};
    return args;
  }

  static size_t workspace_bytes(int num_experts, int sm_count) {
    LaunchArgs la{};
    la.num_experts = num_experts;
    la.sm_count = sm_count;
    return Gemm::get_workspace_size(arguments(la, 0));
  }

  // Per device, once: opt in to the kernel's shared memory and ask how many clusters fit, so the
  // persistent grid is sized to what can be resident (0 lets CUTLASS fall back to its heuristic).
  static const char* prepare_device(int device, int* max_active_clusters) {
    static std::atomic<int> cache[kMaxDevices];  // 0: not queried yet; else clusters + 1
    if (device >= 0 && device < kMaxDevices) {
      int cached = cache[device].load(std::memory_order_relaxed);
      if (cached > 0) {
        *max_active_clusters = cached - 1;
        return nullptr;
      }
    }
    const int smem = int(GemmKernel::SharedStorageSize);
    if (cudaFuncSetAttribute(cutlass::device_kernel<GemmKernel>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess) {
      return cudaGetErrorString(cudaGetLastError());
    }
    cudaLaunchConfig_t config = {};
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = ClusterM;
    attr.val.clusterDim.y = ClusterN;
    attr.val.clusterDim.z = 1;
    config.gridDim = dim3(ClusterM, ClusterN, 1);
    config.blockDim = dim3(GemmKernel::MaxThreadsPerBlock, 1, 1);
    config.dynamicSmemBytes = smem;
    config.attrs = &attr;
    config.numAttrs = 1;
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, cutlass::device_kernel<GemmKernel>, &config) != cudaSuccess) {
      (void)cudaGetLastError();  // an estimate only: fall back to CUTLASS's heuristic grid
      clusters = 0;
    }
    if (device >= 0 && device < kMaxDevices) cache[device].store(clusters + 1, std::memory_order_relaxed);
    *max_active_clusters = clusters;
    return nullptr;
  }

  // Everything arguments() reads, so an equal key means identical Arguments. The stream is not part of
  // it: run() takes the stream, initialize() only hands it to workspace initializers that enqueue
  // nothing for these kernels (group tile scheduler, blockwise mainloop and TMA epilogue all no-ops).
  struct Key {
    int device, sm_count, max_active_clusters, num_experts;
    const GroupShape* problem_sizes;
    void* workspace;
    GroupArrays<SwapAB> arrays;

    bool operator==(const Key& o) const {
      return device == o.device && sm_count == o.sm_count && max_active_clusters == o.max_active_clusters &&
             num_experts == o.num_experts && problem_sizes == o.problem_sizes && workspace == o.workspace &&
             std::memcmp(&arrays, &o.arrays, sizeof(arrays)) == 0;  // pointers only: no padding bytes
    }
  };

  // can_implement + initialize (TMA descriptor and scheduler setup on the host) cost more than the
  // launch itself, and depend on the key only; the caching allocator hands back the same workspace call
  // after call, so they run once per key. A few slots per thread: alternating problems (ES and single
  // share a kernel) do not evict each other; per thread, so no lock.
  static constexpr int kSlots = 4;
  struct Slot {
    bool valid = false;
    Key key;
    Gemm gemm;
  };

  static const char* initialized(const LaunchArgs& la, int max_active_clusters, Gemm** gemm) {
    thread_local Slot slots[kSlots];
    thread_local int next = 0;
    const Key key{la.device, la.sm_count, max_active_clusters, la.num_experts, la.problem_sizes,
                  la.workspace, la.template arrays<SwapAB>()};
    for (Slot& slot : slots) {
      if (slot.valid && slot.key == key) {
        *gemm = &slot.gemm;
        return nullptr;
      }
    }
    Slot& slot = slots[next];
    next = (next + 1) % kSlots;
    slot.valid = false;
    typename Gemm::Arguments args = arguments(la, max_active_clusters);
    cutlass::Status status = slot.gemm.can_implement(args);
    if (status != cutlass::Status::kSuccess) return cutlassGetStatusString(status);
    status = slot.gemm.initialize(args, la.workspace, la.stream);
    if (status != cutlass::Status::kSuccess) return cutlassGetStatusString(status);
    slot.key = key;
    slot.valid = true;
    *gemm = &slot.gemm;
    return nullptr;
  }

  static const char* run(const LaunchArgs& la) {
    int max_active_clusters = 0;
    if (const char* err = prepare_device(la.device, &max_active_clusters)) return err;
    Gemm* gemm = nullptr;
    if (const char* err = initialized(la, max_active_clusters, &gemm)) return err;
    // launch_with_pdl adds cudaLaunchAttributeProgrammaticStreamSerialization to the launch.
    cutlass::Status status = gemm->run(la.stream, /*cuda_adapter=*/nullptr, la.programmatic);
    if (status != cutlass::Status::kSuccess) {
      cudaError_t err = cudaGetLastError();
      return err != cudaSuccess ? cudaGetErrorString(err) : cutlassGetStatusString(status);
    }
    return nullptr;
  }
};

}  // namespace es_dual

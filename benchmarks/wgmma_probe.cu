// How fast the tensor pipe runs the native kernel's K-loop shapes when nothing else limits it: operands
// resident in shared memory (no TMA, no barriers), one CTA per SM, clock64 around a loop of K blocks.
// A K block is, per math warp group, 4 FP8 WGMMAs of m64 x N x k32 (K = 128 bytes, as in
// csrc/native_gemm.cuh), split in `Parts` commit groups of N / Parts columns; after the wait(s) the
// accumulator is optionally promoted (sum += scale * acc, the scale read from shared memory each block,
// as the kernel's promotion does). The tensor cores' work per block is WGs * 64 * N * 128 MACs, at
// 4096 MACs per cycle and SM (dense FP8), i.e. 2 * N * WGs cycles: the probe prints the measured cycles
// per block and that fraction.
//
// Questions it answers (docs/perf-notes.md, 2026-12-07): is m64n128 slower per FLOP than m64n96 or
// m64n192; does a third warp group hide the promotion; what does the promotion cost in each structure
// (native_mc: N = 192 in two halves, wait<1>; DeepGEMM: N = 192 in one group, wait<0>); whether the
// two warp groups, started together, promote at the same time (the tensor cores idle meanwhile) and
// whether a stagger or turns between them keep the tensor cores busy; whether the kernel's TMA loads
// (40 KB per K block landing in other shared memory, from the L2, on every SM at once) slow the tensor pipe
// down, and what rate of TMA loads into shared memory the L2 sustains meanwhile (the last column).
// Build (here, needs the CUTLASS headers): bash benchmarks/probe.sh build wgmma_probe; run (GPU machine,
// carry .cache/es_dual/wgmma_probe): bash benchmarks/probe.sh run wgmma_probe.
#include <cstdio>
#include <vector>

#include <cuda.h>

#include "native_gemm.cuh"

namespace {

using es_dual::native::kBlockK;
using es_dual::native::smem_desc_k_major_sw128;
using es_dual::native::issue_block;

constexpr int kScaleSlots = 64;  // promotion scales in shared memory, one per block mod 64

// TMA traffic (the kernel's loads, without their consumers): one more warp group whose lane 0 keeps kRing
// loads of a 128-row and a 192-row box of 128 bytes (native_mc's token and weight tiles of a K block,
// 40 KB) in flight from an L2-resident buffer into shared memory beside the operands, until the math is
// done. Does the tensor pipe slow down when the kernel's bytes land beside it?
constexpr int kRing = 4;
constexpr int kTrafficRows[2] = {128, 192};
constexpr int kTrafficBytes = (128 + 192) * kBlockK;

template <int N, int WGs, bool Traffic>
constexpr int smem_bytes() {
  return WGs * 64 * kBlockK + N * kBlockK + kScaleSlots * 4 + (Traffic ? kRing * (kTrafficBytes + 8) : 0)
         + 16 + 1024;  // the stop flag, alignment slack
}

// How the math warp groups' blocks are ordered against each other: kFree (each issues when it can; they
// start together), kOffset (the second warp group starts half a block's tensor time late: does a stagger
// persist?), kTurns (the warp groups issue their blocks in turns, WG0's block b before WG1's, WG1's block
// b before WG0's block b + 1: named barriers 1 and 2, as a pingpong schedule orders its consumers).
enum Order { kFree, kOffset, kTurns };

struct TrafficMaps {
  CUtensorMap box[2];  // the L2-resident buffer as rows of 128 bytes, boxes of kTrafficRows rows
  int rows;            // rows of the buffer
};

// Lane 0 of the traffic warp: loads into the ring until *stop is set, then waits for the last ones.
__device__ void traffic(const TrafficMaps& maps, uint8_t* ring, cutlass::arch::ClusterTransactionBarrier* full,
                        volatile int* stop, long long* loads) {
  long long j = 0;
  for (; !*stop; ++j) {
    const int st = int(j % kRing);
    if (j >= kRing) full[st].wait(uint32_t((j / kRing - 1) & 1));  // the ring slot's previous load landed
    full[st].arrive_and_expect_tx(kTrafficBytes);
    uint8_t* dst = ring + st * kTrafficBytes;
    const int row = int((blockIdx.x * 7919 + j * 320) % (maps.rows - 320));
    cute::SM90_TMA_LOAD_2D::copy(&maps.box[0], reinterpret_cast<uint64_t*>(&full[st]), 0, dst, 0, row);
    cute::SM90_TMA_LOAD_2D::copy(&maps.box[1], reinterpret_cast<uint64_t*>(&full[st]), 0, dst + 128 * kBlockK, 0, row + 128);
  }
  for (long long i = j > kRing ? j - kRing : 0; i < j; ++i) full[i % kRing].wait(uint32_t((i / kRing) & 1));
  loads[blockIdx.x] = j;
}

// Traffic: a warp group of its own (the kernel's producer warp group), registers as in the kernel.
template <int WGs, bool Traffic>
constexpr int threads() { return 128 * WGs + (Traffic ? 128 : 0); }

template <int N, int WGs, int Parts, bool Promote, Order kOrder = kFree, bool Traffic = false>
__global__ void __launch_bounds__(threads<WGs, Traffic>(), 1)
    probe(int blocks, long long* cycles, float* sink, const __grid_constant__ TrafficMaps maps, long long* loads) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(CUTE_ARCH_MMA_SM90A_ENABLED)
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (cute::cast_smem_ptr_to_uint(smem_raw) & 1023)) & 1023);
  uint8_t* ring = smem;                            // Traffic: [kRing][40 KB], 1024-byte aligned
  uint8_t* a = ring + (Traffic ? kRing * kTrafficBytes : 0);  // [WGs][64 rows][128 bytes]
  uint8_t* b = a + WGs * 64 * kBlockK;     // [N rows][128 bytes]
  float* scales = reinterpret_cast<float*>(b + N * kBlockK);
  auto* full = reinterpret_cast<cutlass::arch::ClusterTransactionBarrier*>(scales + kScaleSlots);
  volatile int* stop = reinterpret_cast<volatile int*>(full + kRing);
  if (threadIdx.x == 0) {
    *stop = 0;
    for (int i = 0; i < kRing; ++i) full[i].init(1);
    cutlass::arch::fence_barrier_init();
  }
  // Small positive e4m3 values (exponent never all ones: no NaN), not zeros: the tensor pipe may run
  // zeros faster than data.
  for (int i = threadIdx.x; i < WGs * 64 * kBlockK + N * kBlockK; i += blockDim.x)
    smem[i] = uint8_t(0x20 + (i * 37 + 11) % 0x18);
  for (int i = threadIdx.x; i < kScaleSlots; i += blockDim.x) scales[i] = 1.0f + i * 1e-3f;
  cutlass::arch::fence_view_async_shared();  // generic stores, read next by the tensor cores
  __syncthreads();
  constexpr bool kReconfigure = Traffic && WGs == 2;  // 384 threads: 168 registers each unless moved
  if (threadIdx.x >= 128 * WGs) {  // the traffic warp group
    if constexpr (kReconfigure) cutlass::arch::warpgroup_reg_dealloc<40>();
    if (threadIdx.x == 128 * WGs) traffic(maps, ring, full, stop, loads);
    return;
  }
  if constexpr (kReconfigure) cutlass::arch::warpgroup_reg_alloc<232>();

  constexpr int kPart = N / Parts;
  const int wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
  const uint64_t desc_a = smem_desc_k_major_sw128(a + wg * 64 * kBlockK);
  const uint64_t desc_b = smem_desc_k_major_sw128(b);
  float acc[N / 2], sum[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) sum[i] = 0.f;
  auto promote = [&](int i0, int i1, float s) {
#pragma unroll
    for (int i = 0; i < N / 2; ++i)
      if (i >= i0 && i < i1) sum[i] += s * acc[i];
  };

  static_assert(kOrder == kFree || WGs == 2, "orders of two warp groups");
  const long long start = clock64();
  if (kOrder == kOffset && wg == 1)
    while (clock64() - start < N) {}  // half of one warp group's block (2 * N tensor cycles)
  for (int blk = 0; blk < blocks; ++blk) {
    if (kOrder == kTurns && (wg == 1 || blk > 0))
      es_dual::native::named_barrier_sync(1 + wg, 256);  // the other warp group's block is issued
    issue_block<N, Parts>(desc_a, desc_b, acc);  // the kernel's (csrc/native_gemm.cuh)
    if (kOrder == kTurns && (wg == 0 || blk + 1 < blocks))
      es_dual::native::named_barrier_arrive(2 - wg, 256);  // the other's turn
    const float s = scales[blk % kScaleSlots];
    if constexpr (Parts == 2) {
#pragma unroll
      for (int i = 0; i < kPart / 2; ++i) cute::warpgroup_fence_operand(acc[i]);
      cute::warpgroup_wait<1>();
#pragma unroll
      for (int i = 0; i < kPart / 2; ++i) cute::warpgroup_fence_operand(acc[i]);
      if constexpr (Promote) promote(0, kPart / 2, s);
    }
    constexpr int kLast = (Parts - 1) * kPart / 2;
#pragma unroll
    for (int i = kLast; i < N / 2; ++i) cute::warpgroup_fence_operand(acc[i]);
    cute::warpgroup_wait<0>();
#pragma unroll
    for (int i = kLast; i < N / 2; ++i) cute::warpgroup_fence_operand(acc[i]);
    if constexpr (Promote) promote(kLast, N / 2, s);
    else promote(0, 1, s);  // one element, so that the WGMMAs' results are used
  }
  const long long end = clock64();
  if (Traffic) {
    es_dual::native::named_barrier_sync(5, 128 * WGs);  // every math warp group is done
    if (threadIdx.x == 0) *stop = 1;
  }
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) total += sum[i];
  sink[blockIdx.x * blockDim.x + threadIdx.x] = total;
  if (threadIdx.x % 128 == 0) cycles[blockIdx.x * WGs + wg] = end - start;
#endif
}

struct Config {
  const char* name;
  int n, wgs, parts;
  bool promote, traffic;
  void (*kernel)(int, long long*, float*, TrafficMaps, long long*);
  int smem;
};

template <int N, int WGs, int Parts, bool Promote, Order kOrder = kFree, bool Traffic = false>
Config config(const char* name) {
  return {name, N, WGs, Parts, Promote, Traffic, probe<N, WGs, Parts, Promote, kOrder, Traffic>,
          smem_bytes<N, WGs, Traffic>()};
}

bool check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

}  // namespace

int main() {
  const std::vector<Config> configs = {
      // raw WGMMA rate per width and warp groups (promotion of one element only)
      config<96, 2, 1, false>("n96 x2 wg, no promotion"),
      config<128, 2, 1, false>("n128 x2 wg, no promotion"),
      config<192, 2, 1, false>("n192 x2 wg, no promotion"),
      config<128, 3, 1, false>("n128 x3 wg, no promotion"),
      config<192, 1, 1, false>("n192 x1 wg, no promotion"),
      // the kernels' structures
      config<192, 2, 2, true>("n192 x2 wg, halves, wait<1> (native_mc)"),
      config<192, 2, 1, true>("n192 x2 wg, one group, wait<0> (DeepGEMM)"),
      config<128, 3, 1, true>("n128 x3 wg, one group, wait<0> (native_m192)"),
      config<128, 2, 1, true>("n128 x2 wg, one group, wait<0>"),
      // the same with the two warp groups staggered or taking turns
      config<192, 2, 2, true, kOffset>("n192 x2 wg, halves, WG1 starts late"),
      config<192, 2, 2, true, kTurns>("n192 x2 wg, halves, turns"),
      config<192, 2, 1, true, kOffset>("n192 x2 wg, one group, WG1 starts late"),
      config<192, 2, 1, true, kTurns>("n192 x2 wg, one group, turns"),
      config<128, 2, 1, true, kTurns>("n128 x2 wg, one group, turns"),
      // with the kernel's TMA loads landing beside the operands (and the TMA rate they reach, every SM)
      config<192, 2, 1, false, kFree, true>("n192 x2 wg, no promotion, TMA traffic"),
      config<192, 2, 2, true, kFree, true>("n192 x2 wg, halves, TMA traffic"),
      config<192, 2, 1, true, kOffset, true>("n192 x2 wg, one group, late, TMA traffic"),
      config<192, 1, 1, false, kFree, true>("n192 x1 wg, no promotion, TMA traffic"),
  };
  int device = 0, sms = 0;
  if (!check(cudaGetDevice(&device), "cudaGetDevice") ||
      !check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count"))
    return 1;
  const int blocks = 4096;
  long long* cycles = nullptr;
  long long* loads = nullptr;
  float* sink = nullptr;
  uint8_t* buffer = nullptr;  // the traffic's source: 16 MB, resident in the L2 after the first round
  TrafficMaps maps{};
  maps.rows = (16 << 20) / kBlockK;
  if (!check(cudaMalloc(&cycles, sizeof(long long) * sms * 3), "cudaMalloc") ||
      !check(cudaMalloc(&loads, sizeof(long long) * sms), "cudaMalloc") ||
      !check(cudaMalloc(&sink, sizeof(float) * sms * 384), "cudaMalloc") ||
      !check(cudaMalloc(&buffer, size_t(maps.rows) * kBlockK), "cudaMalloc") ||
      !check(cudaMemset(buffer, 0x21, size_t(maps.rows) * kBlockK), "cudaMemset"))
    return 1;
  for (int i = 0; i < 2; ++i) {
    const char* err = es_dual::native::encode_2d(&maps.box[i], CU_TENSOR_MAP_DATA_TYPE_UINT8, buffer, kBlockK,
                                                 maps.rows, kBlockK, kBlockK, kTrafficRows[i],
                                                 CU_TENSOR_MAP_SWIZZLE_128B);
    if (err) { std::fprintf(stderr, "%s\n", err); return 1; }
  }
  std::printf("%-46s %14s %14s %8s %12s\n", "configuration", "cycles/block", "tensor cycles", "busy", "TMA B/cycle");
  for (const Config& c : configs) {
    if (!check(cudaFuncSetAttribute(c.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, c.smem), c.name)) return 1;
    for (int round = 0; round < 2; ++round) {  // the first round warms the clocks up
      c.kernel<<<sms, 128 * c.wgs + (c.traffic ? 128 : 0), c.smem>>>(blocks, cycles, sink, maps, loads);
      if (!check(cudaGetLastError(), c.name) || !check(cudaDeviceSynchronize(), c.name)) return 1;
    }
    std::vector<long long> host(size_t(sms) * c.wgs), host_loads(sms);
    if (!check(cudaMemcpy(host.data(), cycles, sizeof(long long) * host.size(), cudaMemcpyDeviceToHost), "copy") ||
        !check(cudaMemcpy(host_loads.data(), loads, sizeof(long long) * sms, cudaMemcpyDeviceToHost), "copy"))
      return 1;
    long long slowest = 0, fewest_loads = -1;
    for (long long v : host) slowest = v > slowest ? v : slowest;
    for (long long v : host_loads) fewest_loads = fewest_loads < 0 || v < fewest_loads ? v : fewest_loads;
    const double per_block = double(slowest) / blocks;
    const double ideal = 2.0 * c.n * c.wgs;  // 64 * N * 128 MACs per warp group at 4096 MACs per cycle
    std::printf("%-46s %14.1f %14.1f %7.1f%%", c.name, per_block, ideal, 100.0 * ideal / per_block);
    // bytes per cycle and SM that the slowest SM's traffic landed while the math ran (kernel: 40 KB per
    // K block of native_mc, 28 KB of it read from the L2 with the weight tile multicast)
    if (c.traffic) std::printf(" %12.1f", double(fewest_loads) * kTrafficBytes / double(slowest));
    std::printf("\n");
  }
  return 0;
}

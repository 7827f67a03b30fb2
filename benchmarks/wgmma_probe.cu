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
// whether a stagger or turns between them keep the tensor cores busy.
// Build (here, needs the CUTLASS headers): bash benchmarks/wgmma_probe.sh build; run (GPU machine,
// carry .cache/es_dual): bash benchmarks/wgmma_probe.sh run.
#include <cstdio>
#include <vector>

#include "native_gemm.cuh"

namespace {

using es_dual::native::kBlockK;
using es_dual::native::smem_desc_k_major_sw128;
using es_dual::native::wgmma;

constexpr int kScaleSlots = 64;  // promotion scales in shared memory, one per block mod 64

template <int N, int WGs>
constexpr int smem_bytes() {
  return WGs * 64 * kBlockK + N * kBlockK + kScaleSlots * 4 + 1024;  // + alignment slack
}

// How the math warp groups' blocks are ordered against each other: kFree (each issues when it can; they
// start together), kOffset (the second warp group starts half a block's tensor time late: does a stagger
// persist?), kTurns (the warp groups issue their blocks in turns, WG0's block b before WG1's, WG1's block
// b before WG0's block b + 1: named barriers 1 and 2, as a pingpong schedule orders its consumers).
enum Order { kFree, kOffset, kTurns };

template <int N, int WGs, int Parts, bool Promote, Order kOrder = kFree>
__global__ void __launch_bounds__(128 * WGs, 1) probe(int blocks, long long* cycles, float* sink) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(CUTE_ARCH_MMA_SM90A_ENABLED)
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (cute::cast_smem_ptr_to_uint(smem_raw) & 1023)) & 1023);
  uint8_t* a = smem;                       // [WGs][64 rows][128 bytes]
  uint8_t* b = a + WGs * 64 * kBlockK;     // [N rows][128 bytes]
  float* scales = reinterpret_cast<float*>(b + N * kBlockK);
  // Small positive e4m3 values (exponent never all ones: no NaN), not zeros: the tensor pipe may run
  // zeros faster than data.
  for (int i = threadIdx.x; i < WGs * 64 * kBlockK + N * kBlockK; i += blockDim.x)
    smem[i] = uint8_t(0x20 + (i * 37 + 11) % 0x18);
  for (int i = threadIdx.x; i < kScaleSlots; i += blockDim.x) scales[i] = 1.0f + i * 1e-3f;
  cutlass::arch::fence_view_async_shared();  // generic stores, read next by the tensor cores
  __syncthreads();

  constexpr int kPart = N / Parts;
  constexpr uint64_t kPartRows = uint64_t(kPart) * kBlockK / 16;
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
  const long long stop = clock64();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) total += sum[i];
  sink[blockIdx.x * blockDim.x + threadIdx.x] = total;
  if (threadIdx.x % 128 == 0) cycles[blockIdx.x * WGs + wg] = stop - start;
#endif
}

struct Config {
  const char* name;
  int n, wgs, parts;
  bool promote;
  void (*kernel)(int, long long*, float*);
  int smem;
};

template <int N, int WGs, int Parts, bool Promote, Order kOrder = kFree>
Config config(const char* name) {
  return {name, N, WGs, Parts, Promote, probe<N, WGs, Parts, Promote, kOrder>, smem_bytes<N, WGs>()};
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
  };
  int device = 0, sms = 0;
  if (!check(cudaGetDevice(&device), "cudaGetDevice") ||
      !check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count"))
    return 1;
  const int blocks = 4096;
  long long* cycles = nullptr;
  float* sink = nullptr;
  if (!check(cudaMalloc(&cycles, sizeof(long long) * sms * 3), "cudaMalloc") ||
      !check(cudaMalloc(&sink, sizeof(float) * sms * 384), "cudaMalloc"))
    return 1;
  std::printf("%-46s %14s %14s %8s\n", "configuration", "cycles/block", "tensor cycles", "busy");
  for (const Config& c : configs) {
    if (!check(cudaFuncSetAttribute(c.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, c.smem), c.name)) return 1;
    for (int round = 0; round < 2; ++round) {  // the first round warms the clocks up
      c.kernel<<<sms, 128 * c.wgs, c.smem>>>(blocks, cycles, sink);
      if (!check(cudaGetLastError(), c.name) || !check(cudaDeviceSynchronize(), c.name)) return 1;
    }
    std::vector<long long> host(size_t(sms) * c.wgs);
    if (!check(cudaMemcpy(host.data(), cycles, sizeof(long long) * host.size(), cudaMemcpyDeviceToHost), "copy"))
      return 1;
    long long slowest = 0;
    for (long long v : host) slowest = v > slowest ? v : slowest;
    const double per_block = double(slowest) / blocks;
    const double ideal = 2.0 * c.n * c.wgs;  // 64 * N * 128 MACs per warp group at 4096 MACs per cycle
    std::printf("%-46s %14.1f %14.1f %7.1f%%\n", c.name, per_block, ideal, 100.0 * ideal / per_block);
  }
  return 0;
}

// What each part of the native kernel's work costs: native_mc's kernel (csrc/native_gemm.cuh, the mode's
// exact tile kinds) compiled with -DES_DUAL_NATIVE_ABLATE=BITS (native_gemm.cuh's Ablate: leave out the scale
// reads, the stores, the scale copies, the TMA loads, the math, the staging, the promotion, the math's wait
// for the store warps; 0: the kernel as the library compiles it), launched on one problem. The results are wrong under any ablation bit; only the times mean
// something, and compare best in cycles (ncu's gpc__cycles_elapsed.max of the second launch under
// ABLATE_ONCE=1): the card's clocks follow its power draw, which the ablations change.
// Timed: back-to-back launches (no L2 flush: balanced_big's operands are 10x the L2), 100 ms of warm-up,
// two rounds, the better kept.
// Build (here), one binary per set of bits: bash benchmarks/native_ablate.sh build; run (GPU machine, carry
// .cache/es_dual/native_ablate): bash benchmarks/native_ablate.sh run [E m n k] (default: balanced_big,
// 8 experts of 4096 tokens, n = 4096, k = 7168). ABLATE_SCALES_MN=1: the activation scales MN-major (the
// same values: every scale is 1e-2).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#ifndef ES_DUAL_NATIVE_ABLATE
#define ES_DUAL_NATIVE_ABLATE 0
#endif
#include "native_gemm.cuh"

namespace {

namespace nat = es_dual::native;
// native_mc (es_dual/cutlass/buckets.py BUCKETS_NATIVE_MC): its kinds in routing order and their bounds
using NativeMc = nat::Mode<cutlass::bfloat16_t, 2, nat::Kind<true, 128, 32>, nat::Kind<true, 128, 64>,
                           nat::Kind<false, 128, 192>>;
constexpr int kMaxTokens[] = {32, 64, 1 << 30};

bool check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

// Finite FP8 E4M3 bytes from a hash (the exponent's lowest bit cleared: never the NaN pattern).
__global__ void fill_fp8(uint8_t* p, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ uint32_t(i >> 32) * 2246822519u;
    h ^= h >> 15;
    p[i] = uint8_t(h & 0xF7);
  }
}

// v times one of 1, 1.125, ..., 1.875, from a hash of the index.
__global__ void fill_float(float* p, size_t n, float v) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = v * (1.f + float((uint32_t(i) * 2654435761u) >> 29) / 8.f);
}

// A checksum of the output's 16-bit words: equal for two builds of the kernel whose arithmetic is the same (e.g.
// bits 0 before and after a change that moves only where the scales come from; the scales differ per row and
// K block, so a scale read from the wrong place changes it).
__global__ void checksum(const uint16_t* p, size_t n, unsigned long long* sum) {
  unsigned long long local = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    local += p[i] * (1 + i % 7);
  atomicAdd(sum, local);
}

}  // namespace

int main(int argc, char** argv) {
  const int E = argc > 1 ? std::atoi(argv[1]) : 8;
  const int m = argc > 2 ? std::atoi(argv[2]) : 4096;
  const int n = argc > 3 ? std::atoi(argv[3]) : 4096;
  const int k = argc > 4 ? std::atoi(argv[4]) : 7168;
  const int64_t total_m = int64_t(E) * m, k_blocks = (k + 127) / 128, n_blocks = (n + 127) / 128;
  int device = 0, sms = 0;
  uint8_t *a = nullptr, *b = nullptr;
  float *a_scale = nullptr, *b_scale = nullptr;
  void* out = nullptr;
  int32_t* offsets = nullptr;
  if (!check(cudaGetDevice(&device), "device") ||
      !check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "SM count") ||
      !check(cudaMalloc(&a, size_t(total_m) * k), "a") || !check(cudaMalloc(&b, size_t(E) * n * k), "b") ||
      !check(cudaMalloc(&a_scale, sizeof(float) * total_m * k_blocks), "a_scale") ||
      !check(cudaMalloc(&b_scale, sizeof(float) * E * n_blocks * k_blocks), "b_scale") ||
      !check(cudaMalloc(&out, size_t(total_m) * n * 2), "out") ||
      !check(cudaMalloc(&offsets, sizeof(int32_t) * (E + 1)), "offsets"))
    return 1;
  fill_fp8<<<1024, 256>>>(a, size_t(total_m) * k);
  fill_fp8<<<1024, 256>>>(b, size_t(E) * n * k);
  fill_float<<<256, 256>>>(a_scale, size_t(total_m) * k_blocks, 1e-2f);
  fill_float<<<256, 256>>>(b_scale, size_t(E) * n_blocks * k_blocks, 1e-2f);
  std::vector<int32_t> host_offsets(E + 1);
  for (int e = 0; e <= E; ++e) host_offsets[e] = e * m;
  if (!check(cudaMemcpy(offsets, host_offsets.data(), sizeof(int32_t) * (E + 1), cudaMemcpyHostToDevice), "offsets"))
    return 1;

  es_dual::LaunchArgs la{};
  la.num_experts = E, la.device = device, la.sm_count = sms, la.stream = nullptr;
  es_dual::NativeArgs& na = la.native;
  na.a = a, na.a_scale = a_scale, na.b = b, na.b_scale = b_scale, na.out = out;
  na.a_scale_ld = std::getenv("ABLATE_SCALES_MN") ? total_m : 0;
  na.expert_rows = es_dual::ExpertRows{offsets, 0, 0, total_m};
  na.total_m = total_m, na.n = n, na.k = k;
  na.num_buckets = NativeMc::kNumKinds;
  for (int i = 0; i < NativeMc::kNumKinds; ++i) na.max_tokens[i] = kMaxTokens[i];

  // Under ncu (ABLATE_ONCE=1 in the environment): each set launched twice, untimed, for ncu to count
  // the cycles of the second launch (clock-independent: the card's clocks follow its power draw, which
  // the ablations change).
  const bool once = std::getenv("ABLATE_ONCE") != nullptr;
  // µs per launch of one set: 100 ms of launches, then 20 timed
  auto time_once = [&]() -> double {
    if (once) {
      for (int i = 0; i < 2; ++i)
        if (const char* err = nat::GroupedGemm<NativeMc>::run(la)) { std::fprintf(stderr, "%s\n", err); return -1; }
      return check(cudaDeviceSynchronize(), "launch") ? 1.0 : -1.0;
    }
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(100)) {
      for (int i = 0; i < 10; ++i)
        if (const char* err = nat::GroupedGemm<NativeMc>::run(la)) { std::fprintf(stderr, "%s\n", err); return -1; }
      if (!check(cudaDeviceSynchronize(), "warm-up")) return -1;
    }
    cudaEvent_t t0, t1;
    cudaEventCreate(&t0), cudaEventCreate(&t1);
    cudaEventRecord(t0);
    for (int i = 0; i < 20; ++i) nat::GroupedGemm<NativeMc>::run(la);
    cudaEventRecord(t1);
    if (!check(cudaEventSynchronize(t1), "timing")) return -1;
    float ms = 0;
    cudaEventElapsedTime(&ms, t0, t1);
    cudaEventDestroy(t0), cudaEventDestroy(t1);
    return 1000.0 * ms / 20;
  };
  double best = 1e30;
  for (int round = 0; round < (once ? 1 : 2); ++round) {
    const double us = time_once();
    if (us < 0) return 1;
    best = us < best ? us : best;
  }
  unsigned long long* sum = nullptr;
  unsigned long long host_sum = 0;
  if (!check(cudaMalloc(&sum, sizeof(*sum)), "sum") || !check(cudaMemset(sum, 0, sizeof(*sum)), "sum")) return 1;
  checksum<<<1024, 256>>>(static_cast<const uint16_t*>(out), size_t(total_m) * n, sum);
  if (!check(cudaMemcpy(&host_sum, sum, sizeof(host_sum), cudaMemcpyDeviceToHost), "checksum")) return 1;
  std::string what;
  const char* names[] = {"", "scale reads", "stores", "scale copies", "TMA loads", "math", "staging", "promotion",
                         "store wait"};
  for (int bit = 1; bit < 9; ++bit)
    if (ES_DUAL_NATIVE_ABLATE >> bit & 1) what += (what.empty() ? "" : ", ") + std::string(names[bit]);
  const double flops = 2.0 * total_m * n * k;
  std::printf("native_mc E=%d m=%d n=%d k=%d  bits %3d  %-56s %9.1f us %7.1f TFLOP/s  checksum %016llx\n", E, m,
              n, k, ES_DUAL_NATIVE_ABLATE, what.empty() ? "(nothing: the kernel)" : what.c_str(), best,
              flops / best * 1e-6, host_sum);
  return 0;
}

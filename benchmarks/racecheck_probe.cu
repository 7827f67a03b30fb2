// What compute-sanitizer racecheck reports for the shared-memory pipeline of CUTLASS's SM90 FP8 blockwise
// mainloop, on a kernel small enough to read. A producer warp copies each stage's 128 scales into shared
// memory with cp.async and signals the stage's "full" mbarrier with cp.async.mbarrier.arrive.noinc (as
// CUTLASS's load_auxiliary does); a consumer warp group waits on "full", reads the scales with ld.shared and
// releases the stage on its "empty" mbarrier with a cluster-addressed arrive (as PipelineTmaAsync's
// consumer_release does); the producer waits on "empty" before it overwrites the stage.
//
// The release is the one thing that varies:
//   every_reader   : each of the 128 reading threads arrives (CUTLASS with a cluster of one CTA);
//   one_after_bar  : one thread arrives after a named barrier over the warp group;
//   one_unordered  : one thread arrives and nothing orders the other readers' loads before its arrive
//                    (CUTLASS with a cluster of two: there only the "signaling" threads arrive, and the
//                    other threads' scale loads are ordered only by the warp-group-wide WGMMA that all
//                    four warps must issue before the signaling thread's wgmma.wait_group returns, an
//                    ordering racecheck cannot see).
// Usage: racecheck_probe every_reader|one_after_bar|one_unordered; exits non-zero on a wrong value.
#include <cstdint>
#include <cstdio>
#include <cstring>

#include <cuda_runtime.h>

namespace {

constexpr int kStages = 4;
constexpr int kIterations = 64;  // 16 passes over every stage: each stage is reused
constexpr int kScales = 128;     // one per row of a 128-row tile, 4 per producer thread
constexpr int kConsumers = 128;  // one warp group, threads 128..255
enum Release { kEveryReader, kOneAfterBarrier, kOneUnordered };

__device__ uint32_t shared_address(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ void barrier_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(bar)), "r"(count) : "memory");
}

__device__ void barrier_wait(uint64_t* bar, uint32_t phase) {
  asm volatile(
      "{\n\t.reg .pred done;\n"
      "WAIT:\n\t"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
      "@!done bra WAIT;\n}" ::"r"(shared_address(bar)), "r"(phase) : "memory");
}

__device__ void barrier_arrive_cluster(uint64_t* bar) {  // ClusterBarrier::arrive(cta_id = 0, pred)
  asm volatile(
      "{\n\t.reg .b32 remote;\n\t"
      "mapa.shared::cluster.u32 remote, %0, 0;\n\t"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}" ::"r"(shared_address(bar)) : "memory");
}

__global__ void pipeline(const float* src, int release, int* wrong) {
  __shared__ float stage_data[kStages][kScales];
  __shared__ uint64_t full[kStages], empty[kStages];
  const int t = threadIdx.x;
  if (t == 0) {
    for (int s = 0; s < kStages; ++s) {
      barrier_init(&full[s], 32);  // one noinc arrival per producer thread
      barrier_init(&empty[s], release == kEveryReader ? kConsumers : 1);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  if (t < 32) {  // producer warp
    for (int it = 0; it < kIterations; ++it) {
      const int s = it % kStages;
      barrier_wait(&empty[s], ((it / kStages) & 1) ^ 1);
      for (int j = 0; j < kScales / 32; ++j) {
        const int i = t * (kScales / 32) + j;
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(shared_address(&stage_data[s][i])),
                     "l"(src + it * kScales + i) : "memory");
      }
      asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(shared_address(&full[s])) : "memory");
    }
  } else if (t >= kConsumers) {  // consumer warp group
    const int c = t - kConsumers;
    for (int it = 0; it < kIterations; ++it) {
      const int s = it % kStages;
      barrier_wait(&full[s], (it / kStages) & 1);
      const float v = stage_data[s][c];
      if (v != float(it * kScales + c)) atomicAdd(wrong, 1);
      if (release == kOneAfterBarrier) asm volatile("bar.sync 1, %0;" ::"n"(kConsumers) : "memory");
      if (release == kEveryReader || c == 0) barrier_arrive_cluster(&empty[s]);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const char* names[] = {"every_reader", "one_after_bar", "one_unordered"};
  int release = -1;
  for (int r = 0; r < 3; ++r)
    if (argc > 1 && std::strcmp(argv[1], names[r]) == 0) release = r;
  if (release < 0) {
    std::fprintf(stderr, "usage: %s every_reader|one_after_bar|one_unordered\n", argv[0]);
    return 2;
  }
  float host[kIterations * kScales];
  for (int i = 0; i < kIterations * kScales; ++i) host[i] = float(i);
  float* src = nullptr;
  int* wrong = nullptr;
  cudaMalloc(&src, sizeof(host));
  cudaMalloc(&wrong, sizeof(int));
  cudaMemcpy(src, host, sizeof(host), cudaMemcpyHostToDevice);
  cudaMemset(wrong, 0, sizeof(int));
  pipeline<<<1, 256>>>(src, release, wrong);
  int wrong_host = -1;
  cudaMemcpy(&wrong_host, wrong, sizeof(int), cudaMemcpyDeviceToHost);
  const cudaError_t err = cudaDeviceSynchronize();
  std::printf("racecheck_probe %s: %s, %d wrong values\n", names[release], cudaGetErrorString(err), wrong_host);
  return err == cudaSuccess && wrong_host == 0 ? 0 : 1;
}

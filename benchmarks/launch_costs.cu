// Host cost of each CUDA runtime / driver call that one es_dual call makes, on the machine it runs on:
// the price list for the C library's host time (benchmarks/host_overhead.py measures the whole call).
// Build here: nvcc -O2 -std=c++17 -arch=sm_90a -o build/launch_costs benchmarks/launch_costs.cu
// Run there:  build/launch_costs
#include <cuda.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>

struct Big { unsigned char bytes[2048]; };  // a parameter block the size of a CUTLASS grouped GEMM's

__global__ void empty_kernel() {}
__global__ void big_kernel(Big) {}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
using ReplaceAddress = CUresult (*)(CUtensorMap*, void*);

template <class F>
void price(const char* name, F&& f, int calls = 20000) {
  for (int i = 0; i < 200; ++i) f();
  cudaDeviceSynchronize();
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) f();
  auto stop = std::chrono::steady_clock::now();
  cudaDeviceSynchronize();
  double us = std::chrono::duration<double, std::micro>(stop - start).count() / calls;
  printf("launch cost  %-58s %7.2f us/call\n", name, us);
}

int main() {
  cudaStream_t stream, side;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking);
  cudaEvent_t event;
  cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
  void* buffer = nullptr;
  cudaMalloc(&buffer, 1 << 24);
  void* encode_ptr = nullptr;
  void* replace_ptr = nullptr;
  cudaDriverEntryPointQueryResult found;
  cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &encode_ptr, 12000, cudaEnableDefault, &found);
  cudaGetDriverEntryPointByVersion("cuTensorMapReplaceAddress", &replace_ptr, 12000, cudaEnableDefault, &found);
  auto encode = reinterpret_cast<EncodeTiled>(encode_ptr);
  auto replace = reinterpret_cast<ReplaceAddress>(replace_ptr);
  CUtensorMap map;
  const cuuint64_t dims[2] = {512, 4096}, strides[1] = {512};
  const cuuint32_t box[2] = {128, 128}, elem[2] = {1, 1};
  Big big{};

  price("cudaGetDevice", [] { int d; cudaGetDevice(&d); });
  price("cudaGetLastError", [] { cudaGetLastError(); });
  price("empty kernel <<<1, 128>>>", [&] { empty_kernel<<<1, 128, 0, stream>>>(); });
  price("2 KB-parameter kernel <<<132, 384>>>", [&] { big_kernel<<<132, 384, 0, stream>>>(big); });
  price("2 KB-parameter kernel, cudaLaunchKernelEx, no attribute", [&] {
    cudaLaunchConfig_t c{};
    c.gridDim = dim3(132), c.blockDim = dim3(384), c.stream = stream;
    cudaLaunchKernelEx(&c, big_kernel, big);
  });
  price("2 KB-parameter kernel, cudaLaunchKernelEx, cluster 2", [&] {
    cudaLaunchConfig_t c{};
    cudaLaunchAttribute a[1];
    a[0].id = cudaLaunchAttributeClusterDimension;
    a[0].val.clusterDim.x = 2, a[0].val.clusterDim.y = 1, a[0].val.clusterDim.z = 1;
    c.gridDim = dim3(132), c.blockDim = dim3(384), c.stream = stream, c.attrs = a, c.numAttrs = 1;
    cudaLaunchKernelEx(&c, big_kernel, big);
  });
  price("cudaFuncSetAttribute (max dynamic smem)", [&] {
    cudaFuncSetAttribute(big_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
  });
  price("cudaEventRecord", [&] { cudaEventRecord(event, stream); });
  price("cudaStreamWaitEvent", [&] { cudaStreamWaitEvent(side, event); });
  price("cudaEventRecord + wait + launch on side + record + wait", [&] {
    cudaEventRecord(event, stream);
    cudaStreamWaitEvent(side, event);
    empty_kernel<<<1, 128, 0, side>>>();
    cudaEventRecord(event, side);
    cudaStreamWaitEvent(stream, event);
  });
  price("cuTensorMapEncodeTiled (2-D, 128B swizzle)", [&] {
    encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, buffer, dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
           CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  });
  if (replace) price("cuTensorMapReplaceAddress", [&] { replace(&map, buffer); });
  cudaDeviceSynchronize();
  printf("launch cost  status: %s\n", cudaGetErrorString(cudaGetLastError()));
  return 0;
}

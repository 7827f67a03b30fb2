// Is the weighted un-permute worth fusing into the down GEMM's epilogue? (issue 14 at T >= 1024)
// An epilogue holds a tile of bf16 rows (one per pair, grouped by expert); today they are stored and a second
// kernel reads each token's topk rows back (2 x pairs x H x 2 bytes through DRAM). Fused, each row would be
// added, times its routing weight, into its token's output row with vector reductions (red.global.add),
// which stay in L2 when the tiles walk the output by column stripes (N-major: every expert's tile of one
// 128-column block, then the next block). Here the rows come from a small L2-resident source, as from
// registers; times are CUDA-event averages of back-to-back repetitions.
//   bash benchmarks/probe.sh build scatter_add_probe; bash benchmarks/probe.sh run scatter_add_probe [T H E topk]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#define CHECK(x)                                                                         \
  do {                                                                                   \
    cudaError_t e = (x);                                                                 \
    if (e != cudaSuccess) {                                                              \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e));     \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

constexpr int kRows = 128, kCols = 128, kThreads = 256, kSrcRows = 128;

struct Problem {
  int pairs, hidden, tokens, topk;
  const __nv_bfloat16* src;  // kSrcRows x hidden: the values a tile would hold
  const int* row_token;      // per grouped row: its token
  const float* row_weight;   // per grouped row: its routing weight
  const int* pair_row;       // per pair (token * topk + k): its grouped row
  const float* pair_weight;  // per pair
};

__device__ __forceinline__ void tile_of(const Problem& p, bool n_major, int& rb, int& cb) {
  const int row_blocks = (p.pairs + kRows - 1) / kRows, col_blocks = p.hidden / kCols;
  if (n_major) rb = blockIdx.x % row_blocks, cb = blockIdx.x / row_blocks;
  else rb = blockIdx.x / col_blocks, cb = blockIdx.x % col_blocks;
}

// Each thread: 16 bytes (8 columns) of a row per pass; a block covers kRows x kCols.
template <int kMode>  // 0 store rows, 1 red f32 (2 x v4), 2 red bf16x2 (v4)
__global__ void __launch_bounds__(kThreads) epilogue_kernel(Problem p, bool n_major, void* out) {
  int rb, cb;
  tile_of(p, n_major, rb, cb);
  const int chunk = threadIdx.x % (kCols / 8), col = cb * kCols + chunk * 8;
  for (int r = threadIdx.x / (kCols / 8); r < kRows; r += kThreads / (kCols / 8)) {
    const int row = rb * kRows + r;
    if (row >= p.pairs) break;
    const uint4 v = *reinterpret_cast<const uint4*>(p.src + int64_t(row % kSrcRows) * p.hidden + col);
    if constexpr (kMode == 0) {
      *reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(out) + int64_t(row) * p.hidden + col) = v;
    } else {
      const int token = p.row_token[row];
      const float w = p.row_weight[row];
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
      float f[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 x = __bfloat1622float2(h[i]);
        f[2 * i] = w * x.x, f[2 * i + 1] = w * x.y;
      }
      if constexpr (kMode == 1) {
        float* dst = static_cast<float*>(out) + int64_t(token) * p.hidden + col;
        asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(f[0]), "f"(f[1]), "f"(f[2]),
                     "f"(f[3]) : "memory");
        asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst + 4), "f"(f[4]), "f"(f[5]),
                     "f"(f[6]), "f"(f[7]) : "memory");
      } else {
        uint32_t b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const __nv_bfloat162 y = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
          b[i] = *reinterpret_cast<const uint32_t*>(&y);
        }
        __nv_bfloat16* dst = static_cast<__nv_bfloat16*>(out) + int64_t(token) * p.hidden + col;
        asm volatile("red.global.add.noftz.v4.bf16x2 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(b[0]), "r"(b[1]),
                     "r"(b[2]), "r"(b[3]) : "memory");
      }
    }
  }
}

// Today's un-permute: per token and 8 columns, the topk rows summed in float32, stored as bf16.
__global__ void unpermute_kernel(Problem p, const __nv_bfloat16* down, __nv_bfloat16* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int per_token = p.hidden / 8;
  if (i >= int64_t(p.tokens) * per_token) return;
  const int token = int(i / per_token), col = int(i % per_token) * 8;
  float acc[8] = {};
  for (int k = 0; k < p.topk; ++k) {
    const int pair = token * p.topk + k;
    const float w = p.pair_weight[pair];
    const uint4 v = *reinterpret_cast<const uint4*>(down + int64_t(p.pair_row[pair]) * p.hidden + col);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 x = __bfloat1622float2(h[j]);
      acc[2 * j] += w * x.x, acc[2 * j + 1] += w * x.y;
    }
  }
  uint4 o;
  __nv_bfloat162* ob = reinterpret_cast<__nv_bfloat162*>(&o);
#pragma unroll
  for (int j = 0; j < 4; ++j) ob[j] = __floats2bfloat162_rn(acc[2 * j], acc[2 * j + 1]);
  *reinterpret_cast<uint4*>(out + int64_t(token) * p.hidden + col) = o;
}

__global__ void cast_kernel(const float* in, __nv_bfloat16* out, int64_t n) {
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (i >= n) return;
  const float4 a = *reinterpret_cast<const float4*>(in + i), b = *reinterpret_cast<const float4*>(in + i + 4);
  uint4 o;
  __nv_bfloat162* ob = reinterpret_cast<__nv_bfloat162*>(&o);
  ob[0] = __floats2bfloat162_rn(a.x, a.y), ob[1] = __floats2bfloat162_rn(a.z, a.w);
  ob[2] = __floats2bfloat162_rn(b.x, b.y), ob[3] = __floats2bfloat162_rn(b.z, b.w);
  *reinterpret_cast<uint4*>(out + i) = o;
}

template <class F>
float time_us(F f, int reps = 20) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  CHECK(cudaEventRecord(a));
  for (int i = 0; i < reps; ++i) f();
  CHECK(cudaEventRecord(b));
  CHECK(cudaEventSynchronize(b));
  float ms;
  CHECK(cudaEventElapsedTime(&ms, a, b));
  CHECK(cudaGetLastError());
  return ms * 1000 / reps;
}

int main(int argc, char** argv) {
  const int tokens = argc > 1 ? std::atoi(argv[1]) : 4096, hidden = argc > 2 ? std::atoi(argv[2]) : 7168;
  const int experts = argc > 3 ? std::atoi(argv[3]) : 256, topk = argc > 4 ? std::atoi(argv[4]) : 8;
  const int pairs = tokens * topk;
  std::mt19937 rng(0);
  std::vector<int> pair_expert(pairs), order(pairs), pair_row(pairs), row_token(pairs);
  std::vector<float> pair_weight(pairs), row_weight(pairs);
  std::vector<int> perm(experts);
  std::iota(perm.begin(), perm.end(), 0);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  for (int t = 0; t < tokens; ++t) {
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int k = 0; k < topk; ++k) pair_expert[t * topk + k] = perm[k], pair_weight[t * topk + k] = unit(rng);
  }
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return pair_expert[x] < pair_expert[y]; });
  for (int r = 0; r < pairs; ++r) {
    pair_row[order[r]] = r, row_token[r] = order[r] / topk, row_weight[r] = pair_weight[order[r]];
  }
  std::vector<__nv_bfloat16> src(size_t(kSrcRows) * hidden);
  for (auto& x : src) x = __float2bfloat16(unit(rng) * 2 - 1);

  auto upload = [](const auto& v) {
    void* d;
    CHECK(cudaMalloc(&d, v.size() * sizeof(v[0])));
    CHECK(cudaMemcpy(d, v.data(), v.size() * sizeof(v[0]), cudaMemcpyHostToDevice));
    return d;
  };
  Problem p{pairs, hidden, tokens, topk, static_cast<__nv_bfloat16*>(upload(src)),
            static_cast<int*>(upload(row_token)), static_cast<float*>(upload(row_weight)),
            static_cast<int*>(upload(pair_row)), static_cast<float*>(upload(pair_weight))};
  const int64_t out_n = int64_t(tokens) * hidden;
  void *down, *out32, *out16, *ref16;
  CHECK(cudaMalloc(&down, int64_t(pairs) * hidden * 2));
  CHECK(cudaMalloc(&out32, out_n * 4));
  CHECK(cudaMalloc(&out16, out_n * 2));
  CHECK(cudaMalloc(&ref16, out_n * 2));
  const int blocks = (pairs + kRows - 1) / kRows * (hidden / kCols);
  const int unpermute_blocks = int((out_n / 8 + 255) / 256), cast_blocks = int((out_n / 8 + 255) / 256);
  auto bf16 = [](void* x) { return static_cast<__nv_bfloat16*>(x); };

  auto store = [&] { epilogue_kernel<0><<<blocks, kThreads>>>(p, false, down); };
  auto unpermute = [&] { unpermute_kernel<<<unpermute_blocks, 256>>>(p, bf16(down), bf16(ref16)); };
  auto red32 = [&](bool n_major) {
    return [&, n_major] {
      CHECK(cudaMemsetAsync(out32, 0, out_n * 4));
      epilogue_kernel<1><<<blocks, kThreads>>>(p, n_major, out32);
      cast_kernel<<<cast_blocks, 256>>>(static_cast<float*>(out32), bf16(out16), out_n);
    };
  };
  auto red16 = [&](bool n_major) {
    return [&, n_major] {
      CHECK(cudaMemsetAsync(out16, 0, out_n * 2));
      epilogue_kernel<2><<<blocks, kThreads>>>(p, n_major, out16);
    };
  };
  std::vector<__nv_bfloat16> want(out_n), got(out_n);
  store();
  unpermute();
  CHECK(cudaMemcpy(want.data(), ref16, out_n * 2, cudaMemcpyDeviceToHost));
  auto max_rel = [&](void* dev) {
    CHECK(cudaMemcpy(got.data(), dev, out_n * 2, cudaMemcpyDeviceToHost));
    double err = 0, scale = 0;
    for (int64_t i = 0; i < out_n; ++i) {
      const double w = __bfloat162float(want[i]);
      err = std::max(err, std::fabs(double(__bfloat162float(got[i])) - w)), scale = std::max(scale, std::fabs(w));
    }
    return err / scale;
  };
  const double gb = double(pairs) * hidden * 2 / 1e3;  // MB of per-pair rows, in units for us -> GB/s
  std::printf("T %d H %d E %d topk %d: per-pair rows %.0f MB, output %.0f MB\n", tokens, hidden, experts, topk,
              gb, out_n * 2 / 1e6);
  std::printf("%-28s %9s %9s\n", "variant", "us", "max_rel");
  std::printf("%-28s %9.1f\n", "store rows (GEMM's today)", time_us(store));
  std::printf("%-28s %9.1f\n", "un-permute (today)", time_us(unpermute));
  for (bool n_major : {true, false}) {
    const char* order_name = n_major ? "N-major" : "M-major";
    const float t32 = time_us(red32(n_major));
    std::printf("red f32 v4 + cast, %-9s %9.1f %9.1e\n", order_name, t32, max_rel(out16));
    const float t16 = time_us(red16(n_major));
    std::printf("red bf16x2 v4, %-13s %9.1f %9.1e\n", order_name, t16, max_rel(out16));
  }
  CHECK(cudaMemsetAsync(out32, 0, out_n * 4));
  std::printf("%-28s %9.1f\n", "memset f32 + cast alone",
              time_us([&] { CHECK(cudaMemsetAsync(out32, 0, out_n * 4));
                            cast_kernel<<<cast_blocks, 256>>>(static_cast<float*>(out32), bf16(out16), out_n); }));
  return 0;
}

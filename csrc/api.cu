// The C API: check arguments -> lay out the workspace -> prepare on the device -> one grouped GEMM per
// bucket, all ordered before later work on the caller's stream. The bucket table (thresholds and
// kernels) is generated from es_dual/cutlass/buckets.py into es_dual_table.h; nothing here repeats its
// numbers.
#include <climits>
#include <cstdarg>
#include <cstdio>

#include "es_dual.h"
#include "es_dual_table.h"  // generated: kModes, kTableJson
#include "operands.cuh"

namespace es_dual {
namespace {

thread_local char g_last_error[1024] = "";

int fail(int code, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(g_last_error, sizeof(g_last_error), fmt, args);
  va_end(args);
  return code;
}

constexpr size_t kRegionAlign = 256;  // every workspace region; TMA descriptors need 64 bytes
constexpr int kPrepThreads = 128;
constexpr int kPrepMaxBlocks = 1024;
constexpr size_t kZeroPerBlock = kPrepThreads * 8 * sizeof(uint4);  // eight 16-byte stores per thread

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

// Where everything lives in the caller's workspace, for one (mode, out dtype, E, SM count). The CUTLASS
// regions come last, in one piece [cutlass[0], total), which the preparation kernel zeroes. A native
// mode needs none (total 0): its one kernel reads the caller's tensors and nothing else.
struct WorkspacePlan {
  bool uses[2] = {false, false};     // orientation used by some CUTLASS bucket: [normal, swapped]
  size_t arrays[2] = {0, 0};         // offsets of the per-expert arrays of each orientation
  size_t problems[kMaxBuckets] = {}; // offset of each bucket's masked problem-size array
  size_t cutlass[kMaxBuckets] = {};  // offset of each bucket's CUTLASS workspace
  size_t total = 0;
};

WorkspacePlan plan_workspace(const ModeTable& mode, int out_dtype, int num_experts, int sm_count) {
  WorkspacePlan p;
  if (mode.fused[out_dtype]) return p;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    size_t at = off;
    off = round_up(off + bytes, kRegionAlign);
    return at;
  };
  for (int b = 0; b < mode.num_buckets; ++b) p.uses[mode.buckets[b].kernels[out_dtype]->swap_ab] = true;
  if (p.uses[0]) p.arrays[0] = take(GroupArrays<false>{}.carve(nullptr, num_experts));
  if (p.uses[1]) p.arrays[1] = take(GroupArrays<true>{}.carve(nullptr, num_experts));
  for (int b = 0; b < mode.num_buckets; ++b) p.problems[b] = take(sizeof(GroupShape) * size_t(num_experts));
  for (int b = 0; b < mode.num_buckets; ++b)
    p.cutlass[b] = take(mode.buckets[b].kernels[out_dtype]->workspace_bytes(num_experts, sm_count));
  p.total = off;
  return p;
}

// ---------------------------------------------------------------------------------------------------
// Preparation kernel: one thread per expert (grid-stride, so any number of experts). Reads the expert's
// token range (ExpertRows: offsets, or masked counts), writes its pointers, strides and scale layouts for each orientation in
// use, and its problem shape in every bucket: the real shape in the bucket its token count selects, a
// zero token extent (no tiles) in all the others.
// It also zeroes the CUTLASS workspace regions (about 68 KB per bucket on 132 SMs: four 128-byte TMA
// descriptors per SM). The grouped kernels copy their descriptors there with atomic exchanges, which
// read the old bytes before replacing them; zeroed first, no call ever reads memory that nothing wrote
// (what compute-sanitizer's initcheck checks), for a few hundred nanoseconds of stores.
// ---------------------------------------------------------------------------------------------------
struct PrepParams {
  ExpertRows expert_rows;
  int num_experts;
  int64_t total_m, n, k;
  const uint8_t* a;        // fp8 bytes
  const float* a_scale;
  const uint8_t* b;        // fp8 bytes
  const float* b_scale;
  uint8_t* out;            // 2-byte elements
  GroupArrays<false> normal;   // ptr_A == nullptr: orientation unused
  GroupArrays<true> swapped;
  int num_buckets;
  int32_t max_tokens[kMaxBuckets];
  bool swap_ab[kMaxBuckets];
  GroupShape* problems[kMaxBuckets];
  uint4* zero;              // the CUTLASS workspace regions, in 16-byte units
  size_t zero_vectors;
};

template <bool SwapAB>
__device__ void write_expert(const GroupArrays<SwapAB>& g, int e, int m, int n, int k,
                             const uint8_t* tokens, const float* token_scales,
                             const uint8_t* weights, const float* weight_scales, uint8_t* out_rows) {
  using Ops = Operands<SwapAB>;
  using A = typename Ops::ElementA;
  using B = typename Ops::ElementB;
  const int M = SwapAB ? n : m;  // CUTLASS problem (M, N, K) of this expert
  const int N = SwapAB ? m : n;
  g.ptr_A[e] = reinterpret_cast<const A*>(SwapAB ? weights : tokens);
  g.ptr_B[e] = reinterpret_cast<const B*>(SwapAB ? tokens : weights);
  g.ptr_SFA[e] = SwapAB ? weight_scales : token_scales;
  g.ptr_SFB[e] = SwapAB ? token_scales : weight_scales;
  g.ptr_D[e] = out_rows;
  g.stride_A[e] = cutlass::make_cute_packed_stride(typename Ops::StrideA{}, cute::make_shape(M, k, 1));
  g.stride_B[e] = cutlass::make_cute_packed_stride(typename Ops::StrideB{}, cute::make_shape(N, k, 1));
  g.stride_D[e] = cutlass::make_cute_packed_stride(typename Ops::StrideD{}, cute::make_shape(M, N, 1));
  g.layout_SFA[e] = Ops::ScaleConfig::tile_atom_to_shape_SFA(cute::make_shape(M, N, k, 1));
  g.layout_SFB[e] = Ops::ScaleConfig::tile_atom_to_shape_SFB(cute::make_shape(M, N, k, 1));
}

__global__ void prepare_experts(PrepParams p) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.zero_vectors; i += stride)
    p.zero[i] = make_uint4(0, 0, 0, 0);
  const int64_t k_blocks = (p.k + kScaleBlock - 1) / kScaleBlock;
  const int64_t n_blocks = (p.n + kScaleBlock - 1) / kScaleBlock;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < p.num_experts; e += gridDim.x * blockDim.x) {
    // Clamped, so that malformed offsets or counts can never address outside a/out.
    int64_t lo, hi;
    p.expert_rows.range(e, [&](int i) { return p.expert_rows.bound(i); }, lo, hi);
    const int m = int(hi - lo);
    // 64-bit element offsets: E * n * k and total_m * n pass 2^31 easily.
    const uint8_t* tokens = p.a + lo * p.k;
    const float* token_scales = p.a_scale + lo * k_blocks;
    const uint8_t* weights = p.b + int64_t(e) * p.n * p.k;
    const float* weight_scales = p.b_scale + int64_t(e) * n_blocks * k_blocks;
    uint8_t* out_rows = p.out + lo * p.n * 2;
    const int n = int(p.n), k = int(p.k);
    if (p.normal.ptr_A) write_expert(p.normal, e, m, n, k, tokens, token_scales, weights, weight_scales, out_rows);
    if (p.swapped.ptr_A) write_expert(p.swapped, e, m, n, k, tokens, token_scales, weights, weight_scales, out_rows);

    int32_t previous_max = 0;
    for (int b = 0; b < p.num_buckets; ++b) {
      const bool mine = m > previous_max && m <= p.max_tokens[b];
      previous_max = p.max_tokens[b];
      const int tokens_here = mine ? m : 0;
      p.problems[b][e] = p.swap_ab[b] ? cute::make_shape(n, tokens_here, k) : cute::make_shape(tokens_here, n, k);
    }
  }
}

// Makes `device` current for the duration of a call and restores the caller's device after.
struct DeviceGuard {
  int previous = -1;
  cudaError_t error = cudaSuccess;
  explicit DeviceGuard(int device) {
    error = cudaGetDevice(&previous);
    if (error == cudaSuccess && previous != device) error = cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int now = -1;
    if (previous >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous) cudaSetDevice(previous);
  }
};

bool misaligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes != 0; }

// Size rules shared by both entry points; 0 when the sizes are acceptable.
int check_sizes(int64_t total_m, int64_t n, int64_t k, int32_t num_experts, int32_t out_dtype,
                int32_t mode, int32_t sm_count) {
  if (mode < 0 || mode >= kNumModes)
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "mode: expected 0 (%s) to %d (%s), got %d", kModes[0].name,
                kNumModes - 1, kModes[kNumModes - 1].name, mode);
  if (out_dtype != ES_DUAL_OUT_BF16 && out_dtype != ES_DUAL_OUT_FP16)
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "out_dtype: expected 0 (bf16) or 1 (fp16), got %d", out_dtype);
  // Tuning modes may use kernels compiled for bf16 only (es_dual/cutlass/generate.py).
  for (int b = 0; b < kModes[mode].num_buckets; ++b)
    if (!kModes[mode].buckets[b].kernels[out_dtype])
      return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "out_dtype: mode %d (%s) has no kernel for out_dtype %d in bucket %s",
                  mode, kModes[mode].name, out_dtype, kModes[mode].buckets[b].name);
  if (num_experts < 1)
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "num_experts: expected >= 1, got %d", num_experts);
  if (total_m < 0 || total_m > INT_MAX)
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "total_m: expected 0 <= total_m <= %d, got %lld", INT_MAX, (long long)total_m);
  // TMA: every row of a/b (k bytes) and of out (2n bytes) must start on a 16-byte boundary.
  if (k <= 0 || k % 16 || k > INT_MAX)
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "k: expected a positive multiple of 16 (16-byte FP8 rows), got %lld", (long long)k);
  if (n <= 0 || n % 8 || n > INT_MAX)
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "n: expected a positive multiple of 8 (16-byte output rows), got %lld", (long long)n);
  if (sm_count < 1)
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "sm_count: expected the device's SM count (>= 1), got %d", sm_count);
  return ES_DUAL_OK;
}

// Streams and events of ES_DUAL_OVERLAP_STREAMS, per thread and device: created on first use, kept for
// the thread's life (never per call). A call records and consumes its events before it returns, so
// reusing them in the next call is safe; per thread, so concurrent callers never wait on each other's
// records and a stream joined into one thread's graph capture is never touched by another thread.
// Never destroyed: at thread or process exit the runtime may already be torn down.
struct ForkJoin {
  cudaEvent_t fork = nullptr;                 // recorded on the caller's stream after the preparation
  cudaStream_t streams[kMaxBuckets - 1] = {}; // bucket i > 0 runs on streams[i - 1]
  cudaEvent_t joins[kMaxBuckets - 1] = {};    // recorded on streams[i - 1] after its bucket
};

cudaError_t fork_join(int device, int side_streams, ForkJoin** out) {
  thread_local ForkJoin per_device[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  ForkJoin& fj = per_device[device];
  cudaError_t err = cudaSuccess;
  if (!fj.fork) err = cudaEventCreateWithFlags(&fj.fork, cudaEventDisableTiming);
  for (int i = 0; i < side_streams && err == cudaSuccess; ++i) {
    if (!fj.streams[i]) err = cudaStreamCreateWithFlags(&fj.streams[i], cudaStreamNonBlocking);
    if (err == cudaSuccess && !fj.joins[i]) err = cudaEventCreateWithFlags(&fj.joins[i], cudaEventDisableTiming);
  }
  *out = &fj;
  return err;
}

}  // namespace
}  // namespace es_dual

using namespace es_dual;

extern "C" {

int es_dual_workspace_bytes(int64_t total_m, int64_t n, int64_t k, int32_t num_experts, int32_t out_dtype,
                            int32_t mode, int32_t sm_count, size_t* bytes) {
  if (!bytes) return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "bytes: expected a pointer to write the size to, got NULL");
  if (int status = check_sizes(total_m, n, k, num_experts, out_dtype, mode, sm_count)) return status;
  *bytes = plan_workspace(kModes[mode], out_dtype, num_experts, sm_count).total;
  return ES_DUAL_OK;
}

int es_dual_grouped_gemm(const void* a, const float* a_scale, int64_t a_scale_ld, const int32_t* row_index,
                         const void* b, const float* b_scale,
                         const void* expert_offsets, int32_t offsets_int64, int64_t max_m, void* out, int64_t total_m,
                         int64_t n, int64_t k, int32_t num_experts, int32_t out_dtype, int32_t mode,
                         int32_t overlap, int32_t device, int32_t sm_count, void* workspace,
                         size_t workspace_bytes, void* stream) {
  if (int status = check_sizes(total_m, n, k, num_experts, out_dtype, mode, sm_count)) return status;
  if (overlap != ES_DUAL_OVERLAP_SERIAL && overlap != ES_DUAL_OVERLAP_STREAMS && overlap != ES_DUAL_OVERLAP_PDL)
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "overlap: expected 0 (serial), 1 (streams) or 2 (pdl), got %d", overlap);
  if (max_m < 0 || max_m > total_m || (max_m > 0 && max_m * num_experts != total_m))
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "max_m: expected 0 (offsets) or total_m / num_experts = %lld / %d "
                "(masked counts), got %lld", (long long)total_m, num_experts, (long long)max_m);
  const ModeTable& table = kModes[mode];
  // (a gather's a_scale has the rows its indices address, which only the caller knows)
  if (a_scale_ld < 0 || (a_scale_ld > 0 && a_scale_ld < total_m && !row_index))
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "a_scale_ld: expected 0 (K-major scales) or an MN-major leading "
                "dimension >= total_m = %lld, got %lld", (long long)total_m, (long long)a_scale_ld);
  if (a_scale_ld > 0 && max_m > 0)
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "a_scale_ld: MN-major scales take expert offsets, not masked counts "
                "(max_m = %lld)", (long long)max_m);
  if (a_scale_ld > 0 && !table.fused[out_dtype])
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "a_scale_ld: mode %d (%s) reads K-major scales only; MN-major "
                "scales need a native mode", mode, table.name);
  if (row_index && (max_m > 0 || !table.fused[out_dtype]))
    return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "row_index: gathered rows need a native mode and expert offsets, "
                "got mode %d (%s) and max_m = %lld", mode, table.name, (long long)max_m);
  if (total_m == 0) return ES_DUAL_OK;  // no rows: nothing to write
  const ExpertRows rows{expert_offsets, offsets_int64, max_m, total_m};
  const WorkspacePlan plan = plan_workspace(table, out_dtype, num_experts, sm_count);
  const struct { const char* name; const void* ptr; size_t align; bool needed; } pointers[] = {
      {"a", a, 16, true}, {"a_scale", a_scale, 4, true}, {"b", b, 16, true}, {"b_scale", b_scale, 4, true},
      {"expert_offsets", expert_offsets, size_t(offsets_int64 ? 8 : 4), true}, {"out", out, 16, true},
      {"row_index", row_index, 4, row_index != nullptr},
      {"workspace", workspace, kRegionAlign, plan.total > 0}};  // a native mode needs none
  for (const auto& p : pointers) {
    if (!p.needed) continue;
    if (!p.ptr) return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "%s: expected a device pointer, got NULL", p.name);
    if (misaligned(p.ptr, p.align))
      return fail(ES_DUAL_ERROR_INVALID_ARGUMENT, "%s: expected a %zu-byte aligned pointer, got %p", p.name, p.align, p.ptr);
  }
  if (workspace_bytes < plan.total)
    return fail(ES_DUAL_ERROR_WORKSPACE, "workspace: expected at least %zu bytes, got %zu", plan.total, workspace_bytes);

  DeviceGuard guard(device);
  if (guard.error != cudaSuccess)
    return fail(ES_DUAL_ERROR_CUDA, "cannot make device %d current: %s", device, cudaGetErrorString(guard.error));
  cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);

  if (const KernelEntry* fused = table.fused[out_dtype]) {
    // A native mode: every bucket's tiles in one persistent launch on the caller's stream, straight from
    // the caller's tensors (no preparation, no workspace; overlap does not apply: nothing to overlap).
    if (num_experts > kNativeMaxExperts || (int64_t(num_experts) + 1) * n > INT_MAX ||
        (total_m + num_experts) * ((n + 7) / 8) > INT_MAX)  // shared-memory schedule, 32-bit TMA coordinates
      return fail(ES_DUAL_ERROR_INVALID_ARGUMENT,
                  "mode %d (%s): native kernels take at most %d experts, (E + 1) * n <= %d and fewer than "
                  "2^31 tiles, got E = %d, n = %lld, total_m = %lld", mode, table.name, kNativeMaxExperts,
                  INT_MAX, num_experts, (long long)n, (long long)total_m);
    NativeArgs native{a, a_scale, a_scale_ld, row_index, b, b_scale, rows, out, total_m, n, k, table.num_buckets, {}};
    for (int i = 0; i < table.num_buckets; ++i) native.max_tokens[i] = table.buckets[i].max_tokens;
    LaunchArgs launch{num_experts, nullptr, {}, {}, nullptr, device, sm_count, cuda_stream, false, native};
    if (const char* err = fused->run(launch))
      return fail(ES_DUAL_ERROR_CUTLASS, "mode %s (kernel %s): %s", table.name, fused->name, err);
    return ES_DUAL_OK;
  }

  uint8_t* base = static_cast<uint8_t*>(workspace);
  PrepParams prep = {};
  prep.expert_rows = rows;
  prep.num_experts = num_experts;
  prep.total_m = total_m, prep.n = n, prep.k = k;
  prep.a = static_cast<const uint8_t*>(a), prep.a_scale = a_scale;
  prep.b = static_cast<const uint8_t*>(b), prep.b_scale = b_scale;
  prep.out = static_cast<uint8_t*>(out);
  if (plan.uses[0]) prep.normal.carve(base + plan.arrays[0], num_experts);
  if (plan.uses[1]) prep.swapped.carve(base + plan.arrays[1], num_experts);
  prep.num_buckets = table.num_buckets;
  for (int i = 0; i < table.num_buckets; ++i) {
    prep.max_tokens[i] = table.buckets[i].max_tokens;
    prep.swap_ab[i] = table.buckets[i].kernels[out_dtype]->swap_ab;
    prep.problems[i] = reinterpret_cast<GroupShape*>(base + plan.problems[i]);
  }
  prep.zero = reinterpret_cast<uint4*>(base + plan.cutlass[0]);
  prep.zero_vectors = (plan.total - plan.cutlass[0]) / sizeof(uint4);
  // One thread per expert, and at least one block per kZeroPerBlock bytes to zero.
  const size_t zero_blocks = (plan.total - plan.cutlass[0] + kZeroPerBlock - 1) / kZeroPerBlock;
  size_t blocks = (size_t(num_experts) + kPrepThreads - 1) / kPrepThreads;
  blocks = blocks > zero_blocks ? blocks : zero_blocks;
  blocks = blocks < kPrepMaxBlocks ? blocks : kPrepMaxBlocks;
  prepare_experts<<<unsigned(blocks), kPrepThreads, 0, cuda_stream>>>(prep);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess)
    return fail(ES_DUAL_ERROR_CUDA, "preparation kernel launch failed: %s", cudaGetErrorString(err));

  // One grouped GEMM per bucket that can hold an expert, no host synchronization in between: an expert
  // has at most total_m rows (offsets are clamped to [0, total_m]; masked counts to max_m), so the buckets
  // above the first whose bound reaches that are empty and not launched (at decode sizes, one GEMM
  // instead of three). The
  // buckets depend on the preparation only (disjoint output rows, separate workspace regions), so they
  // may overlap:
  //   serial : back to back on the caller's stream;
  //   streams: fork/join (valid inside graph capture): bucket 0 on the caller's stream, bucket i > 0 on
  //            an internal stream that waits for the preparation; the caller's stream then waits for all;
  //   pdl    : back to back, buckets after the first launched with programmatic stream serialization.
  //            Bucket 0 is launched normally, so it and (transitively) every later bucket start after
  //            the preparation has completed; a bucket never reads what the one before it writes.
  int active = 1;
  const int64_t most_rows = max_m > 0 ? max_m : total_m;
  while (active < table.num_buckets && most_rows > table.buckets[active - 1].max_tokens) ++active;
  const bool forking = overlap == ES_DUAL_OVERLAP_STREAMS && active > 1;
  ForkJoin* fj = nullptr;
  if (forking) {
    cudaError_t err = fork_join(device, active - 1, &fj);
    if (err == cudaSuccess) err = cudaEventRecord(fj->fork, cuda_stream);
    if (err != cudaSuccess) return fail(ES_DUAL_ERROR_CUDA, "overlap streams: %s", cudaGetErrorString(err));
  }
  int status = ES_DUAL_OK;
  int forked = 0;  // side streams that wait on the fork event, hence must be joined
  for (int i = 0; i < active && status == ES_DUAL_OK; ++i) {
    const KernelEntry* kernel = table.buckets[i].kernels[out_dtype];
    cudaStream_t bucket_stream = cuda_stream;
    if (forking && i > 0) {
      bucket_stream = fj->streams[i - 1];
      if (cudaError_t err = cudaStreamWaitEvent(bucket_stream, fj->fork); err != cudaSuccess) {
        status = fail(ES_DUAL_ERROR_CUDA, "overlap streams: %s", cudaGetErrorString(err));
        break;
      }
      forked = i;
    }
    const bool programmatic = overlap == ES_DUAL_OVERLAP_PDL && i > 0;
    LaunchArgs launch{num_experts, prep.problems[i], prep.normal, prep.swapped, base + plan.cutlass[i],
                      device, sm_count, bucket_stream, programmatic, {}};
    if (const char* err = kernel->run(launch))
      status = fail(ES_DUAL_ERROR_CUTLASS, "bucket %s (kernel %s): %s", table.buckets[i].name, kernel->name, err);
  }
  // Join every forked stream, also after a failure: a graph capture must end with all streams joined.
  for (int i = 1; i <= forked; ++i) {
    cudaError_t err = cudaEventRecord(fj->joins[i - 1], fj->streams[i - 1]);
    if (err == cudaSuccess) err = cudaStreamWaitEvent(cuda_stream, fj->joins[i - 1]);
    if (err != cudaSuccess && status == ES_DUAL_OK)
      status = fail(ES_DUAL_ERROR_CUDA, "overlap streams: %s", cudaGetErrorString(err));
  }
  return status;
}

const char* es_dual_last_error(void) { return g_last_error; }

const char* es_dual_version(void) { return "0.1.0"; }

const char* es_dual_table_json(void) { return kTableJson; }

}  // extern "C"

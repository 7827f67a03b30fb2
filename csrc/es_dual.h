// es_dual: FP8 blockwise-scaled grouped GEMM for Mixture-of-Experts, CUTLASS SM90 backend. Plain C ABI.
//
// For every expert e, rows = offs[e] .. offs[e+1]-1 of a (tokens grouped by expert, no padding):
//   out[rows] = (dequant(a[rows], a_scale[rows]) @ dequant(b[e], b_scale[e])^T).to(out dtype)
//
//   a        (total_m, k)                       float8_e4m3fn, row-major
//   a_scale  (total_m, ceil(k/128))             float32, row-major: one scale per token and 128 of K
//   b        (E, n, k)                          float8_e4m3fn, row-major (K contiguous)
//   b_scale  (E, ceil(n/128), ceil(k/128))      float32, row-major: one scale per 128x128 block
//   offs     (E + 1)                            int32 (or int64 with offsets_int64 = 1), on the device
//   out      (total_m, n)                       bfloat16 (out_dtype 0) or float16 (out_dtype 1)
//
// The masked layout (max_m > 0; max_m = 0 is the layout above): a, a_scale and out hold E blocks of max_m
// rows (total_m = E * max_m), and expert_offsets holds E counts instead of offsets: expert e's rows are
// e * max_m .. e * max_m + counts[e] - 1, each count clamped to [0, max_m]. Rows past a count are not written.
//
// All pointers are device pointers of `device`. The call only enqueues work (a CUTLASS mode: a device
// preparation kernel, then one CUTLASS grouped GEMM per bucket that can hold an expert of at most
// total_m rows; a native mode: one kernel), all of it ordered before later work on `stream`: no host
// synchronization, no device memory allocation, so it can be captured in a CUDA graph. The per-expert
// token counts are read on the device only. `workspace` (at least es_dual_workspace_bytes; may be NULL
// when that is 0, as for the native modes) is owned by the caller and must stay untouched until the work
// on `stream` has finished.
//
// Status: 0 on success; otherwise nonzero and es_dual_last_error() describes the failure (thread-local).
#pragma once

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define ES_DUAL_API __attribute__((visibility("default")))
#else
#define ES_DUAL_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum {
  ES_DUAL_OK = 0,
  ES_DUAL_ERROR_INVALID_ARGUMENT = 1,  // a size, mode, dtype, pointer or alignment the library refuses
  ES_DUAL_ERROR_WORKSPACE = 2,         // workspace missing, too small or misaligned
  ES_DUAL_ERROR_CUDA = 3,              // a CUDA runtime call failed (message has cudaGetErrorString)
  ES_DUAL_ERROR_CUTLASS = 4,           // CUTLASS refused or failed to launch a kernel
};

enum { ES_DUAL_OUT_BF16 = 0, ES_DUAL_OUT_FP16 = 1 };
// mode: an index into the compiled bucket table, in the order es_dual_table_json lists it. Every build
// starts with these two; a tuning build appends more.
enum { ES_DUAL_MODE_EXPERT_SPECIALIZED = 0, ES_DUAL_MODE_SINGLE = 1 };

// overlap: how the bucket kernels, which depend on the preparation kernel only, are enqueued.
enum {
  ES_DUAL_OVERLAP_SERIAL = 0,   // back to back on `stream`
  ES_DUAL_OVERLAP_STREAMS = 1,  // bucket 0 on `stream`, the others on internal streams of the library
                                // (cached per thread and device) forked from and joined back to `stream`
  ES_DUAL_OVERLAP_PDL = 2,      // back to back on `stream`, buckets after the first with programmatic
                                // dependent launch
};

// Bytes of workspace es_dual_grouped_gemm needs for these sizes: host arithmetic only (no CUDA call),
// an upper bound that does not depend on how the tokens are split between experts. `sm_count` is the
// device's multiprocessor count (the persistent grids size their tensor-map workspace with it).
ES_DUAL_API int es_dual_workspace_bytes(int64_t total_m, int64_t n, int64_t k, int32_t num_experts,
                                        int32_t out_dtype, int32_t mode, int32_t sm_count,
                                        size_t* bytes);

// a_scale_ld: 0 for K-major activation scales ((total_m, ceil(k/128)) row-major); > 0 for MN-major ones
// (block kb of row r at a_scale[kb * a_scale_ld + r], a_scale_ld >= total_m), native modes and expert
// offsets only.
// row_index: NULL, or (total_m,) int32 on the device: row r of the grouped GEMM reads row row_index[r] of
// a and of a_scale (a gather: a and a_scale then have as many rows as the caller's indices address, each
// index in [0, that count), a_scale K-major with ceil(k/128) floats a row, or MN-major with a_scale_ld
// above that count; nothing checks the indices on the device). Native modes and expert offsets only.
// `device` is made current for the call (and the caller's device restored); `sm_count` must be the
// value given to es_dual_workspace_bytes. Alignment: a, b, out 16 bytes; scales 4; offsets their size;
// workspace 256. k % 16 == 0 and n % 8 == 0 (16-byte rows for TMA). The host-side setup of each
// kernel (CUTLASS can_implement + initialize) is cached per thread and redone only when the workspace
// address, the number of experts, the device or the SM count change.
ES_DUAL_API int es_dual_grouped_gemm(const void* a, const float* a_scale, int64_t a_scale_ld,
                                     const int32_t* row_index, const void* b,
                                     const float* b_scale, const void* expert_offsets,
                                     int32_t offsets_int64, int64_t max_m, void* out, int64_t total_m, int64_t n,
                                     int64_t k, int32_t num_experts, int32_t out_dtype, int32_t mode,
                                     int32_t overlap, int32_t device, int32_t sm_count, void* workspace,
                                     size_t workspace_bytes, void* stream);

// Message of the last failed call on this thread ("" if none failed yet).
ES_DUAL_API const char* es_dual_last_error(void);

// Library version.
ES_DUAL_API const char* es_dual_version(void);

// The compiled-in bucket table as JSON, generated from es_dual/cutlass/buckets.py: a list of modes in
// mode-argument order, [{"mode": "es", "buckets": [{"name", "max_tokens", "swap_ab",
// "kernels": [bf16, fp16]}, ...]}, {"mode": "single", ...}, ...]; a kernel is null where the build did
// not compile that output dtype.
ES_DUAL_API const char* es_dual_table_json(void);

#ifdef __cplusplus
}
#endif

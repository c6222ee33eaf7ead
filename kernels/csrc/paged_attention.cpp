// Paged-attention decode on the CPU: one query token per sequence, keys/values read in place through
// the block table (no gather copy), softmax in fp32. Reference: kernels/paged_attention_reference.py.
//
// Legend: B sequences, Hq query heads, Hkv kv heads, G = Hq / Hkv query heads per kv head, D head dim,
//         S tokens per cache block, L context length of one sequence.
// Layouts (contiguous, checked in kernels/cpu_attention.py): q fp32 [B, Hq, D]; k_cache, v_cache
// [num_blocks, S, Hkv, D] fp32 or bf16; block_tables int32 [B, max_blocks]; context_lens int32 [B];
// out fp32 [B, Hq, D].
// One task per sequence streams each token's cache row [Hkv, D] once per pass (keys, then values) for all
// heads, prefetching rows a few tokens ahead (blocks are scattered); results do not depend on the thread
// count or on the other sequences in the batch.
// write_kv_cache, below, puts each step's new keys and values into their slots before any of this reads them.
#include "paged_attention.h"

#include "fast_exp.h"
#include "task_pool.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace cpu_attention {
namespace {

// A cache row as fp32: fp32 rows are used in place; bf16 is the top half of an fp32, so widening is a shift.
inline const float* to_fp32(const char* row, bool bf16, int64_t n, float* scratch) {
  if (!bf16) return reinterpret_cast<const float*>(row);
  const uint16_t* src = reinterpret_cast<const uint16_t*>(row);
  uint32_t* dst = reinterpret_cast<uint32_t*>(scratch);
#pragma omp simd
  for (int64_t i = 0; i < n; i++) dst[i] = uint32_t(src[i]) << 16;
  return scratch;
}

// q . k over D. With AVX-512 the 16 lanes reduce in a shuffle tree; a plain simd reduction makes GCC
// spill the lanes and add them one by one, which made this kernel 2x slower.
inline float dot(const float* q, const float* k, int64_t D) {
#if defined(__AVX512F__)
  if (D % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), acc);
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < D; d++) s += q[d] * k[d];
  return s;
}

inline void axpy(float a, const float* x, float* y, int64_t D) {   // y += a * x
#pragma omp simd
  for (int64_t d = 0; d < D; d++) y[d] += a * x[d];
}

// scores [Hq, L] and a row buffer [Hkv * D], reused by every task of this thread.
struct Scratch {
  std::vector<float> scores, row, inv_sum;
};

// A token's keys (or values) of all kv heads are one contiguous row [Hkv, D] of the cache.
struct CacheRows {
  const char* base;
  int64_t row_bytes, S;
  const int32_t* block_table;
  const char* row(int64_t l) const { return base + (int64_t(block_table[l / S]) * S + l % S) * row_bytes; }
  void prefetch(int64_t l, int64_t L) const {   // rows of random blocks: the hardware prefetcher cannot guess them
    if (l >= L) return;
    const char* p = row(l);
    for (int64_t off = 0; off < row_bytes; off += 64) __builtin_prefetch(p + off);
  }
};

constexpr int64_t kPrefetchAhead = 16;  // tokens

// One sequence, all heads: q [Hq, D] -> out [Hq, D]. Streams each cache row once per pass.
void attend_one(const float* q, const CacheRows& keys, const CacheRows& values, bool bf16, int64_t L, int64_t Hq,
                int64_t Hkv, int64_t D, float scale, float* out, Scratch& buf) {
  const int64_t G = Hq / Hkv;
  buf.scores.resize(Hq * L);
  buf.row.resize(Hkv * D);
  float* scores = buf.scores.data();   // [Hq, L]
  for (int64_t l = 0; l < L; l++) {
    keys.prefetch(l + kPrefetchAhead, L);
    const float* k = to_fp32(keys.row(l), bf16, Hkv * D, buf.row.data());          // [Hkv, D]
    for (int64_t h = 0; h < Hq; h++) scores[h * L + l] = dot(q + h * D, k + (h / G) * D, D) * scale;
  }
  std::vector<float>& inv_sum = buf.inv_sum;
  inv_sum.resize(Hq);
  for (int64_t h = 0; h < Hq; h++) {
    float* sh = scores + h * L;
    const float m = *std::max_element(sh, sh + L);
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t l = 0; l < L; l++) sum += (sh[l] = fast_exp(sh[l] - m));
    inv_sum[h] = 1.f / sum;
  }
  std::fill(out, out + Hq * D, 0.f);
  for (int64_t l = 0; l < L; l++) {
    values.prefetch(l + kPrefetchAhead, L);
    const float* v = to_fp32(values.row(l), bf16, Hkv * D, buf.row.data());        // [Hkv, D]
    for (int64_t h = 0; h < Hq; h++) axpy(scores[h * L + l], v + (h / G) * D, out + h * D, D);
  }
  for (int64_t h = 0; h < Hq; h++)
    for (int64_t d = 0; d < D; d++) out[h * D + d] *= inv_sum[h];
}

// fp32 -> bf16 as torch's .to(torch.bfloat16) rounds: to nearest even; a NaN stays a NaN (c10's scalar 0x7FC0).
inline uint16_t to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

}  // namespace

// The step's new keys and values into their cache slots (vLLM's reshape_and_cache): k, v fp32 [N, row_elems]
// with row strides k_stride / v_stride (views of the fused qkv output), slots int64 [N], caches
// [num_slots, row_elems] fp32 or bf16. One call instead of torch's convert + index_put for each of k and v.
void write_kv_cache(bool cache_bf16, int64_t N, int64_t row_elems, uintptr_t k_ptr, int64_t k_stride, uintptr_t v_ptr,
                    int64_t v_stride, uintptr_t slots_ptr, int64_t num_slots, uintptr_t k_cache_ptr,
                    uintptr_t v_cache_ptr) {
  const int64_t* slots = reinterpret_cast<const int64_t*>(slots_ptr);
  for (int64_t n = 0; n < N; n++)
    if (slots[n] < 0 || slots[n] >= num_slots)
      throw std::out_of_range("slot_mapping[" + std::to_string(n) + "] = " + std::to_string(slots[n]) +
                              " is outside the cache's " + std::to_string(num_slots) + " slots");
  const float* src[2] = {reinterpret_cast<const float*>(k_ptr), reinterpret_cast<const float*>(v_ptr)};
  const int64_t stride[2] = {k_stride, v_stride};
  char* cache[2] = {reinterpret_cast<char*>(k_cache_ptr), reinterpret_cast<char*>(v_cache_ptr)};
  for (int kv = 0; kv < 2; kv++)
    for (int64_t n = 0; n < N; n++) {
      const float* row = src[kv] + n * stride[kv];
      if (cache_bf16) {
        uint16_t* dst = reinterpret_cast<uint16_t*>(cache[kv]) + slots[n] * row_elems;
        for (int64_t i = 0; i < row_elems; i++) dst[i] = to_bf16(row[i]);
      } else {
        std::memcpy(reinterpret_cast<float*>(cache[kv]) + slots[n] * row_elems, row, row_elems * 4);
      }
    }
}

void paged_attention_decode(bool cache_bf16, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t S,
                            int64_t max_blocks, double scale, uintptr_t q_ptr, uintptr_t k_cache_ptr,
                            uintptr_t v_cache_ptr, uintptr_t block_tables_ptr, uintptr_t context_lens_ptr,
                            uintptr_t out_ptr) {
  const float* q = reinterpret_cast<const float*>(q_ptr);                         // [B, Hq, D]
  const int32_t* block_tables = reinterpret_cast<const int32_t*>(block_tables_ptr);  // [B, max_blocks]
  const int32_t* context_lens = reinterpret_cast<const int32_t*>(context_lens_ptr);  // [B]
  float* out = reinterpret_cast<float*>(out_ptr);                                  // [B, Hq, D]
  const int64_t row_bytes = Hkv * D * (cache_bf16 ? 2 : 4);
  cpu_moe::run_tasks(B, [&](int64_t b) {
    static thread_local Scratch buf;
    float* o = out + b * Hq * D;
    const int64_t L = context_lens[b];
    if (L <= 0) {
      std::fill(o, o + Hq * D, 0.f);
      return;
    }
    const int32_t* table = block_tables + b * max_blocks;
    const CacheRows keys{reinterpret_cast<const char*>(k_cache_ptr), row_bytes, S, table};     // [NB, S, Hkv, D]
    const CacheRows values{reinterpret_cast<const char*>(v_cache_ptr), row_bytes, S, table};
    attend_one(q + b * Hq * D, keys, values, cache_bf16, L, Hq, Hkv, D, float(scale), o, buf);
  });
}

}  // namespace cpu_attention

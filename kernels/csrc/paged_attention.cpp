// Paged-attention decode on the CPU: one query token per sequence, keys/values read in place through
// the block table (no gather copy), softmax in fp32. Reference: kernels/paged_attention_reference.py.
//
// Legend: B sequences, Hq query heads, Hkv kv heads, G = Hq / Hkv query heads per kv head, D head dim,
//         S tokens per cache block, L context length of one sequence.
// Layouts (contiguous, checked in kernels/cpu_attention.py): q fp32 [B, Hq, D]; k_cache, v_cache
// [num_blocks, S, Hkv, D] fp32 or bf16; block_tables int32 [B, max_blocks]; context_lens int32 [B];
// out fp32 [B, Hq, D].
// One task per query row (or per run of up to 16 rows of one prompt, attend_rows) streams each token's cache
// row [Hkv, D] once per pass (keys, then values) for all heads, prefetching rows a few tokens ahead (blocks are
// scattered); a row's result does not depend on the thread count or on the other rows in the batch.
// rotary_kv.cpp puts each step's new keys and values into their slots before any of this reads them.
#include "paged_attention.h"

#include "fast_exp.h"
#include "task_pool.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
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

// scores [Hq, L], fp32 cache rows [kBlock, Hkv * D] and 1 / sum per head, reused by every task of this thread.
struct Scratch {
  std::vector<float> scores, rows, inv_sum;
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
constexpr int64_t kBlock = 16;          // tokens per pass over the heads: one zmm of scores
constexpr int64_t kMaxRowsPerTask = 16; // query rows of one request sharing each widened block (attend_rows)

// rows[j] = the fp32 row [Hkv * D] of token l0 + j, j < n (bf16 widened into scratch [kBlock, Hkv * D]); rows n..kBlock-1
// repeat row 0, so that the AVX-512 scores pass runs a fixed 16 (its sums stay in registers) and drops those lanes.
inline void block_rows(const CacheRows& cache, bool bf16, int64_t l0, int64_t n, int64_t L, int64_t HD, float* scratch,
                       const float** rows) {
  for (int64_t j = 0; j < n; j++) {
    cache.prefetch(l0 + j + kPrefetchAhead, L);
    rows[j] = to_fp32(cache.row(l0 + j), bf16, HD, scratch + j * HD);
  }
  for (int64_t j = n; j < kBlock; j++) rows[j] = rows[0];
}

#if defined(__AVX512F__)
// Lane j of the result = the sum of v[j]'s 16 lanes: 45 shuffles and adds for 16 sums, where 16
// _mm512_reduce_add_ps take about 3x as many instructions.
inline __m512 sum16(const __m512 (&v)[16]) {
  __m512 p[8], q[4];
  for (int i = 0; i < 8; i++)   // per 128-bit lane: (a0+a2, b0+b2, a1+a3, b1+b3) of a = v[2i], b = v[2i+1]
    p[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; i++)   // per 128-bit lane: the lane's sums of v[4i .. 4i+3]
    q[i] = _mm512_add_ps(_mm512_shuffle_ps(p[2 * i], p[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(p[2 * i], p[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(q[0], q[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(q[0], q[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(q[2], q[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_f32x4(q[2], q[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// scores[h][l0 + j] = scale * q_h . k_j for j < n, over D (a multiple of 16); k has kBlock rows (block_rows).
inline void block_scores(const float* q, const float* const* k, int64_t n, int64_t Hq, int64_t G, int64_t D, float scale,
                         int64_t L, int64_t l0, float* scores) {
  const __mmask16 live = __mmask16((1u << n) - 1);
  for (int64_t h = 0; h < Hq; h++) {
    const float* qh = q + h * D;
    const int64_t off = (h / G) * D;
    __m512 acc[16];   // [j] partial sums of q_h . k_j
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      const __m512 qv = _mm512_loadu_ps(qh + d);
      for (int j = 0; j < 16; j++) acc[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k[j] + off + d), acc[j]);
    }
    _mm512_mask_storeu_ps(scores + h * L + l0, live, _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale)));
  }
}

// out[h] += sum_j p[h][l0 + j] * v_j over D (a multiple of 16). Up to 4 zmm of out at a time, even and odd j
// in separate sums: 8 independent FMA chains, so that consecutive FMAs do not wait on each other.
inline void block_values(const float* p, const float* const* v, int64_t n, int64_t Hq, int64_t G, int64_t D, int64_t L,
                         int64_t l0, float* out) {
  for (int64_t h = 0; h < Hq; h++) {
    const float* ph = p + h * L + l0;
    const int64_t off = (h / G) * D;
    for (int64_t d0 = 0; d0 < D; d0 += 64) {
      const int c = int(std::min<int64_t>(4, (D - d0) / 16));
      __m512 even[4], odd[4];
      for (int i = 0; i < 4; i++) even[i] = odd[i] = _mm512_setzero_ps();
      int64_t j = 0;
      for (; j + 1 < n; j += 2) {
        const __m512 pe = _mm512_set1_ps(ph[j]), po = _mm512_set1_ps(ph[j + 1]);
        for (int i = 0; i < 4; i++) {
          if (i >= c) break;
          even[i] = _mm512_fmadd_ps(pe, _mm512_loadu_ps(v[j] + off + d0 + 16 * i), even[i]);
          odd[i] = _mm512_fmadd_ps(po, _mm512_loadu_ps(v[j + 1] + off + d0 + 16 * i), odd[i]);
        }
      }
      if (j < n) {
        const __m512 pe = _mm512_set1_ps(ph[j]);
        for (int i = 0; i < c; i++) even[i] = _mm512_fmadd_ps(pe, _mm512_loadu_ps(v[j] + off + d0 + 16 * i), even[i]);
      }
      for (int i = 0; i < c; i++) {
        float* o = out + h * D + d0 + 16 * i;
        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), _mm512_add_ps(even[i], odd[i])));
      }
    }
  }
}
#endif

// The portable passes, one token at a time.
inline void block_scores_portable(const float* q, const float* const* k, int64_t n, int64_t Hq, int64_t G, int64_t D,
                                  float scale, int64_t L, int64_t l0, float* scores) {
  for (int64_t j = 0; j < n; j++)
    for (int64_t h = 0; h < Hq; h++) scores[h * L + l0 + j] = dot(q + h * D, k[j] + (h / G) * D, D) * scale;
}

inline void block_values_portable(const float* p, const float* const* v, int64_t n, int64_t Hq, int64_t G, int64_t D,
                                  int64_t L, int64_t l0, float* out) {
  for (int64_t j = 0; j < n; j++)
    for (int64_t h = 0; h < Hq; h++) axpy(p[h * L + l0 + j], v[j] + (h / G) * D, out + h * D, D);
}

// scores[0..L) -> exp(scores - max) in place; returns 1 / their sum. The sum runs over 16 fixed lanes, combined
// pairwise: the same bits wherever the row sits in memory (a compiler's simd reduction may peel a few elements
// to align the pointer, and a row's scores sit at another offset in a run than alone).
inline float softmax_numerators(float* scores, int64_t L) {
  constexpr int kLanes = 16;
  const float m = *std::max_element(scores, scores + L);
#pragma omp simd
  for (int64_t l = 0; l < L; l++) scores[l] = fast_exp(scores[l] - m);
  float acc[kLanes] = {};
  int64_t l = 0;
  for (; l + kLanes <= L; l += kLanes)
    for (int j = 0; j < kLanes; j++) acc[j] += scores[l + j];
  for (int j = 0; l < L; l++, j++) acc[j] += scores[l];
  for (int n = kLanes / 2; n > 0; n /= 2)
    for (int j = 0; j < n; j++) acc[j] += acc[j + n];
  return 1.f / acc[0];
}

inline void normalize(float* out, const float* inv_sum, int64_t Hq, int64_t D) {   // out [Hq, D] *= inv_sum [Hq]
  for (int64_t h = 0; h < Hq; h++)
    for (int64_t d = 0; d < D; d++) out[h * D + d] *= inv_sum[h];
}

// R consecutive query rows of one request, all heads (context lengths L0, L0 + 1, ...; the same block table):
// q [R, Hq, D] -> out [R, Hq, D]. Reads each cache row once per pass (keys, then values), kBlock tokens at a
// time, for all R rows: a prompt's rows re-read the same cache, each block P / 2 times on average. A row's result
// does not depend on R or on the rows beside it: each row's arithmetic is the same as alone (R = 1, a decode
// row), and its lanes of a shared block past its own length are computed on real rows and dropped.
void attend_rows(const float* q, int64_t R, const CacheRows& keys, const CacheRows& values, bool bf16, int64_t L0,
                 int64_t Hq, int64_t Hkv, int64_t D, float scale, float* out, Scratch& buf) {
  const int64_t G = Hq / Hkv, HD = Hkv * D, Lmax = L0 + R - 1;
  buf.scores.resize(R * Hq * Lmax);
  buf.rows.resize(kBlock * HD);
  buf.inv_sum.resize(R * Hq);
  auto scores = [&](int64_t r) { return buf.scores.data() + r * Hq * Lmax; };   // [Hq, Lmax] per row
  const float* rows[kBlock];
#if defined(__AVX512F__)
  [[maybe_unused]] const bool wide = D % 16 == 0;
#else
  [[maybe_unused]] const bool wide = false;
#endif
  for (int64_t l0 = 0; l0 < Lmax; l0 += kBlock) {
    block_rows(keys, bf16, l0, std::min(kBlock, Lmax - l0), Lmax, HD, buf.rows.data(), rows);
    for (int64_t r = std::max<int64_t>(0, l0 + 1 - L0); r < R; r++) {   // rows whose context reaches l0
      const int64_t n = std::min(kBlock, L0 + r - l0);
#if defined(__AVX512F__)
      if (wide) {
        block_scores(q + r * Hq * D, rows, n, Hq, G, D, scale, Lmax, l0, scores(r));
        continue;
      }
#endif
      block_scores_portable(q + r * Hq * D, rows, n, Hq, G, D, scale, Lmax, l0, scores(r));
    }
  }
  for (int64_t r = 0; r < R; r++)
    for (int64_t h = 0; h < Hq; h++) buf.inv_sum[r * Hq + h] = softmax_numerators(scores(r) + h * Lmax, L0 + r);
  std::fill(out, out + R * Hq * D, 0.f);
  for (int64_t l0 = 0; l0 < Lmax; l0 += kBlock) {
    block_rows(values, bf16, l0, std::min(kBlock, Lmax - l0), Lmax, HD, buf.rows.data(), rows);
    for (int64_t r = std::max<int64_t>(0, l0 + 1 - L0); r < R; r++) {
      const int64_t n = std::min(kBlock, L0 + r - l0);
#if defined(__AVX512F__)
      if (wide) {
        block_values(scores(r), rows, n, Hq, G, D, Lmax, l0, out + r * Hq * D);
        continue;
      }
#endif
      block_values_portable(scores(r), rows, n, Hq, G, D, Lmax, l0, out + r * Hq * D);
    }
  }
  for (int64_t r = 0; r < R; r++) normalize(out + r * Hq * D, buf.inv_sum.data() + r * Hq, Hq, D);
}

}  // namespace

void paged_attention_decode(bool cache_bf16, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t S,
                            int64_t max_blocks, double scale, uintptr_t q_ptr, uintptr_t k_cache_ptr,
                            uintptr_t v_cache_ptr, uintptr_t block_tables_ptr, uintptr_t context_lens_ptr,
                            uintptr_t out_ptr) {
  const float* q = reinterpret_cast<const float*>(q_ptr);                         // [B, Hq, D]
  const int32_t* block_tables = reinterpret_cast<const int32_t*>(block_tables_ptr);  // [B, max_blocks]
  const int32_t* context_lens = reinterpret_cast<const int32_t*>(context_lens_ptr);  // [B]
  float* out = reinterpret_cast<float*>(out_ptr);                                  // [B, Hq, D]
  const int64_t row_bytes = Hkv * D * (cache_bf16 ? 2 : 4);
  // Tasks: runs of rows of one request (the same table, lengths L, L + 1, ...: a prompt's rows) in chunks, so
  // that every run gives at least 4 tasks and a chunk's scores [rows, Hq, L] stay under 512 KB (L2); a decode
  // row is a task of its own.
  struct Task { int64_t b, rows; };   // rows b .. b + rows - 1
  std::vector<Task> tasks;
  for (int64_t b = 0; b < B;) {
    int64_t n = 1;
    while (b + n < B && context_lens[b + n] == context_lens[b] + n && context_lens[b] > 0 &&
           std::memcmp(block_tables + b * max_blocks, block_tables + (b + n) * max_blocks, max_blocks * 4) == 0)
      n++;
    const int64_t longest = std::max<int64_t>(1, context_lens[b] + n - 1);
    const int64_t fit = std::max<int64_t>(1, (int64_t(512) << 10) / (4 * Hq * longest));
    const int64_t chunk = std::min({kMaxRowsPerTask, fit, (n + 3) / 4});
    for (int64_t i = 0; i < n; i += chunk) tasks.push_back({b + i, std::min(chunk, n - i)});
    b += n;
  }
  // Longest work first (rows x context), so that the last tasks the threads claim are short ones.
  auto work = [&](const Task& t) { return t.rows * (context_lens[t.b] + t.rows); };
  std::stable_sort(tasks.begin(), tasks.end(), [&](const Task& x, const Task& y) { return work(x) > work(y); });
  cpu_moe::run_tasks(int64_t(tasks.size()), [&](int64_t t) {
    static thread_local Scratch buf;
    const int64_t b = tasks[t].b;
    float* o = out + b * Hq * D;
    const int64_t L = context_lens[b];
    if (L <= 0) {
      std::fill(o, o + Hq * D, 0.f);
      return;
    }
    const int32_t* table = block_tables + b * max_blocks;
    const CacheRows keys{reinterpret_cast<const char*>(k_cache_ptr), row_bytes, S, table};     // [NB, S, Hkv, D]
    const CacheRows values{reinterpret_cast<const char*>(v_cache_ptr), row_bytes, S, table};
    attend_rows(q + b * Hq * D, tasks[t].rows, keys, values, cache_bf16, L, Hq, Hkv, D, float(scale), o, buf);
  });
}

}  // namespace cpu_attention

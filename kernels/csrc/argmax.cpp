// Argmax of each row: out[r] = the first index of row r's largest value, torch.argmax's answer (a NaN counts
// as the largest, and the first NaN wins).
//
// Legend: R rows, V vocabulary. logits fp32 [R, V], out int64 [R] (contiguous, checked in kernels/cpu_argmax.py).
// Why: torch's CPU argmax walks a row one element at a time (about 0.5-1 ms for 16 rows of 49152 in every
// decode step); this keeps 4 registers of running maxima with their indices (64 lanes with AVX-512, 32 with
// AVX2), a compare and two blends per register of values. Each lane keeps its first maximum (strict >), and
// lanes tie-break to the smaller index: the first maximum of the row. Other builds run the same lanes in plain
// C++. Rows split over the task pool; a row's answer depends on that row alone.
// Reference: torch.argmax (kernels/test_cpu_argmax.py).
#include "argmax.h"

#include <limits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "task_pool.h"

namespace cpu_sampling {
namespace {

// 4 registers of lanes, so that 4 compare-and-blend chains run side by side.
#if defined(__AVX512F__)
constexpr int kWidth = 16;
#elif defined(__AVX2__)
constexpr int kWidth = 8;
#else
constexpr int kWidth = 16;
#endif
constexpr int kRegs = 4, kLanes = kRegs * kWidth;

// Lane maxima over the first V - V % kLanes values: best[j], and at[j] = the first index holding it (-1: none
// above -inf). Returns whether any of those values is a NaN.
#if defined(__AVX512F__)
bool lane_maxima(const float* a, int64_t V, float* best, int32_t* at) {
  __m512 m[kRegs];
  __m512i idx[kRegs], arg[kRegs];
  __mmask16 nan = 0;
  for (int r = 0; r < kRegs; r++) {
    m[r] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    arg[r] = _mm512_set1_epi32(-1);
    idx[r] = _mm512_add_epi32(_mm512_set1_epi32(16 * r),
                              _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  const __m512i step = _mm512_set1_epi32(kLanes);
  for (int64_t i = 0; i + kLanes <= V; i += kLanes)
    for (int r = 0; r < kRegs; r++) {
      const __m512 x = _mm512_loadu_ps(a + i + 16 * r);
      const __mmask16 more = _mm512_cmp_ps_mask(x, m[r], _CMP_GT_OQ);
      nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
      m[r] = _mm512_mask_mov_ps(m[r], more, x);
      arg[r] = _mm512_mask_mov_epi32(arg[r], more, idx[r]);
      idx[r] = _mm512_add_epi32(idx[r], step);
    }
  for (int r = 0; r < kRegs; r++) {
    _mm512_storeu_ps(best + 16 * r, m[r]);
    _mm512_storeu_si512(at + 16 * r, arg[r]);
  }
  return nan != 0;
}
#elif defined(__AVX2__)
bool lane_maxima(const float* a, int64_t V, float* best, int32_t* at) {
  __m256 m[kRegs], nan = _mm256_setzero_ps();
  __m256i idx[kRegs], arg[kRegs];
  for (int r = 0; r < kRegs; r++) {
    m[r] = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    arg[r] = _mm256_set1_epi32(-1);
    idx[r] = _mm256_add_epi32(_mm256_set1_epi32(8 * r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  const __m256i step = _mm256_set1_epi32(kLanes);
  for (int64_t i = 0; i + kLanes <= V; i += kLanes)
    for (int r = 0; r < kRegs; r++) {
      const __m256 x = _mm256_loadu_ps(a + i + 8 * r);
      const __m256 more = _mm256_cmp_ps(x, m[r], _CMP_GT_OQ);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
      m[r] = _mm256_blendv_ps(m[r], x, more);
      arg[r] = _mm256_blendv_epi8(arg[r], idx[r], _mm256_castps_si256(more));
      idx[r] = _mm256_add_epi32(idx[r], step);
    }
  for (int r = 0; r < kRegs; r++) {
    _mm256_storeu_ps(best + 8 * r, m[r]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + 8 * r), arg[r]);
  }
  return _mm256_movemask_ps(nan) != 0;
}
#else
bool lane_maxima(const float* a, int64_t V, float* best, int32_t* at) {
  bool nan = false;
  for (int j = 0; j < kLanes; j++) best[j] = -std::numeric_limits<float>::infinity(), at[j] = -1;
  for (int64_t i = 0; i + kLanes <= V; i += kLanes)
    for (int j = 0; j < kLanes; j++) {
      const float x = a[i + j];
      nan |= x != x;
      if (x > best[j]) best[j] = x, at[j] = int32_t(i + j);
    }
  return nan;
}
#endif

int64_t argmax_row(const float* a, int64_t V) {
  float best[kLanes];
  int32_t at[kLanes];
  const int64_t tail = V - V % kLanes;
  bool nan = lane_maxima(a, V, best, at);
  for (int64_t t = tail; t < V; t++) nan |= a[t] != a[t];
  if (nan)
    for (int64_t t = 0; t < V; t++)
      if (a[t] != a[t]) return t;
  int64_t arg = -1;
  float top = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < kLanes; j++)   // each lane holds its first maximum: ties go to the smaller index
    if (at[j] >= 0 && (best[j] > top || (best[j] == top && at[j] < arg))) top = best[j], arg = at[j];
  for (int64_t t = tail; t < V; t++)   // the tail comes after every lane's indices: only a larger value wins
    if (a[t] > top) top = a[t], arg = t;
  return arg < 0 ? 0 : arg;            // every value -inf: index 0, as torch
}

}  // namespace

void argmax_rows(int64_t R, int64_t V, uintptr_t logits_ptr, uintptr_t out_ptr) {
  const float* logits = reinterpret_cast<const float*>(logits_ptr);   // [R, V]
  int64_t* out = reinterpret_cast<int64_t*>(out_ptr);                  // [R]
  cpu_moe::run_tasks(R, [&](int64_t r) { out[r] = argmax_row(logits + r * V, V); });
}

}  // namespace cpu_sampling

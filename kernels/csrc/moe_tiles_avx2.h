// AVX2 + FMA tile kernels over the packed layouts of moe_tiles.h, for x86 CPUs without AVX-512 (Zen 2/3,
// Intel client cores). A 16-row block is two ymm halves of 8 rows; accumulators are [TM][2 halves] ymm per
// block, with TM <= 4 in registers (16 ymm); a tile of 8 tokens runs as two tiles of 4.
// Integer sums are exact and every fp32 step repeats the AVX-512 tiles' operations in the same order, so
// fp32, int8, int4 and the fp32-activation bf16 path give the same bits as the avx512_vnni variant (tested).
//   int8: s8 weights widened to s16, vpmaddwd against an s16 activation pair (vpdpwssd's work, then vpaddd).
//   int4: vpmaddubsw of u8 nibbles x s8 activations, summed in s16 over at most 32 k (|sum| <= 15 * 127 * 16
//         = 30480 < 2^15), then vpmaddwd by ones into s32 (vpdpbusd's work in three instructions).
#pragma once
#include <immintrin.h>

#include <algorithm>

#include "moe_tiles.h"

namespace cpu_moe {

constexpr int kPrefetchAvx2 = 2048;   // bytes ahead in each weight stream
constexpr int kAvx2TM = 4;            // most tokens per tile in registers

inline __m256 bf16x8_to_fp32(const void* p) {
  const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// The line kPrefetchAvx2 bytes ahead into L1, and the same line of the caller's next block (`ahead`) into L2.
inline void prefetch(const void* p, int64_t ahead) {
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchAvx2, _MM_HINT_T0);
  if (ahead) _mm_prefetch(static_cast<const char*>(p) + ahead, _MM_HINT_T1);
}

// Runs a tile of TM > kAvx2TM tokens as tiles of kAvx2TM; returns false when TM fits in registers.
template <int TM, class Tile>
inline bool split_tile(const WeightBlock* wb, const ActRow* a, int64_t Kp, int G, float* out, Tile tile) {
  if constexpr (TM > kAvx2TM) {
    for (int t = 0; t < TM; t += kAvx2TM) tile(wb, a + t, Kp, G, out + t * kRB * kRows);
    return true;
  }
  return false;
}

template <int TM>
inline void store_half(const __m256 (&acc)[TM][2], float* out, int rb) {
  for (int t = 0; t < TM; t++)
    for (int h = 0; h < 2; h++) _mm256_storeu_ps(out + t * kRB * kRows + rb * kRows + 8 * h, acc[t][h]);
}

template <int TM>
inline void tile_fp32(const WeightBlock* wb, const ActRow* a, int64_t Kp, int G, float* out) {
  if (split_tile<TM>(wb, a, Kp, G, out, tile_fp32<kAvx2TM>)) return;
  for (int rb = 0; rb < kRB; rb++) {
    const float* w = static_cast<const float*>(wb[rb].q);   // [Kp][16]
    __m256 acc[TM][2];
    for (int t = 0; t < TM; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < Kp; k++) {
      if (k % 4 == 0) prefetch(w + k * kRows, wb[rb].ahead);
      const __m256 v0 = _mm256_loadu_ps(w + k * kRows), v1 = _mm256_loadu_ps(w + k * kRows + 8);
      for (int t = 0; t < TM; t++) {
        const __m256 av = _mm256_set1_ps(static_cast<const float*>(a[t].q)[k]);
        acc[t][0] = _mm256_fmadd_ps(v0, av, acc[t][0]);
        acc[t][1] = _mm256_fmadd_ps(v1, av, acc[t][1]);
      }
    }
    store_half<TM>(acc, out, rb);
  }
}

// kFp32Act: activations stay fp32 (dense linears). Both paths widen bf16 weights and use FMA, even k first.
template <int TM, bool kFp32Act = false>
inline void tile_bf16(const WeightBlock* wb, const ActRow* a, int64_t Kp, int G, float* out) {
  if (split_tile<TM>(wb, a, Kp, G, out, tile_bf16<kAvx2TM, kFp32Act>)) return;
  const __m256i hi_mask = _mm256_set1_epi32(int32_t(0xFFFF0000u));
  for (int rb = 0; rb < kRB; rb++) {
    const uint16_t* w = static_cast<const uint16_t*>(wb[rb].q);   // [Kp/2][16][2]
    __m256 acc[TM][2];
    for (int t = 0; t < TM; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < Kp; k += 2) {
      prefetch(w + k * kRows, wb[rb].ahead);
      __m256 e[2], o[2];
      for (int h = 0; h < 2; h++) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k * kRows + 16 * h));
        e[h] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        o[h] = _mm256_castsi256_ps(_mm256_and_si256(v, hi_mask));
      }
      for (int t = 0; t < TM; t++) {
        __m256 ae, ao;
        if constexpr (kFp32Act) {
          const float* ap = static_cast<const float*>(a[t].q) + k;
          ae = _mm256_set1_ps(ap[0]), ao = _mm256_set1_ps(ap[1]);
        } else {
          const uint16_t* ap = static_cast<const uint16_t*>(a[t].q) + k;
          ae = _mm256_set1_ps(bf16_to_float(ap[0])), ao = _mm256_set1_ps(bf16_to_float(ap[1]));
        }
        for (int h = 0; h < 2; h++) acc[t][h] = _mm256_fmadd_ps(o[h], ao, _mm256_fmadd_ps(e[h], ae, acc[t][h]));
      }
    }
    store_half<TM>(acc, out, rb);
  }
}

template <int TM>
inline void tile_int8(const WeightBlock* wb, const ActRow* a, int64_t Kp, int G, float* out) {
  if (split_tile<TM>(wb, a, Kp, G, out, tile_int8<kAvx2TM>)) return;
  for (int rb = 0; rb < kRB; rb++) {
    const int8_t* w = static_cast<const int8_t*>(wb[rb].q);   // [Kp/2][16][2]
    __m256 acc[TM][2];
    for (int t = 0; t < TM; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < Kp; k0 += kFlushK) {
      __m256i iacc[TM][2];
      for (int t = 0; t < TM; t++) iacc[t][0] = iacc[t][1] = _mm256_setzero_si256();
      const int64_t k1 = std::min<int64_t>(k0 + kFlushK, Kp);
      for (int64_t k = k0; k < k1; k += 2) {
        if (k % 4 == 0) prefetch(w + k * kRows, wb[rb].ahead);
        __m256i v[2];
        for (int h = 0; h < 2; h++)
          v[h] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k * kRows + 16 * h)));
        for (int t = 0; t < TM; t++) {
          const __m256i av = _mm256_set1_epi32(load_i32(static_cast<const int16_t*>(a[t].q) + k));
          for (int h = 0; h < 2; h++) iacc[t][h] = _mm256_add_epi32(iacc[t][h], _mm256_madd_epi16(v[h], av));
        }
      }
      for (int t = 0; t < TM; t++)
        for (int h = 0; h < 2; h++) acc[t][h] = _mm256_add_ps(acc[t][h], _mm256_cvtepi32_ps(iacc[t][h]));
    }
    for (int h = 0; h < 2; h++) {
      const __m256 ws = _mm256_loadu_ps(static_cast<const float*>(wb[rb].scale) + 8 * h);
      for (int t = 0; t < TM; t++) acc[t][h] = _mm256_mul_ps(acc[t][h], _mm256_mul_ps(ws, _mm256_set1_ps(a[t].scale[0])));
    }
    store_half<TM>(acc, out, rb);
  }
}

template <int TM>
inline void tile_int4(const WeightBlock* wb, const ActRow* a, int64_t Kp, int G, float* out) {
  if (split_tile<TM>(wb, a, Kp, G, out, tile_int4<kAvx2TM>)) return;
  constexpr int64_t kS16K = 32;   // k summed in s16 before widening (see the header)
  const __m256i nibble = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  for (int rb = 0; rb < kRB; rb++) {
    const uint8_t* w = static_cast<const uint8_t*>(wb[rb].q);         // [Kp/8][16][4], two nibbles per byte
    const uint16_t* s = static_cast<const uint16_t*>(wb[rb].scale);   // [Kp/G][2][16] bf16: scale, min
    __m256 acc[TM][2];
    for (int t = 0; t < TM; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < Kp / G; g++) {
      _mm_prefetch(reinterpret_cast<const char*>(s + g * 2 * kRows) + kPrefetchScales, _MM_HINT_T0);
      __m256i gacc[TM][2];
      for (int t = 0; t < TM; t++) gacc[t][0] = gacc[t][1] = _mm256_setzero_si256();
      for (int64_t k0 = g * G; k0 < (g + 1) * G; k0 += kS16K) {
        __m256i sacc[TM][2];
        for (int t = 0; t < TM; t++) sacc[t][0] = sacc[t][1] = _mm256_setzero_si256();
        for (int64_t k = k0; k < std::min<int64_t>(k0 + kS16K, (g + 1) * G); k += 8) {
          prefetch(w + k * 8, wb[rb].ahead);
          __m256i lo[2], hi[2];
          for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k * 8 + 32 * h));
            lo[h] = _mm256_and_si256(v, nibble), hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
          }
          for (int t = 0; t < TM; t++) {
            const int8_t* ap = static_cast<const int8_t*>(a[t].q) + k;
            const __m256i alo = _mm256_set1_epi32(load_i32(ap)), ahi = _mm256_set1_epi32(load_i32(ap + 4));
            for (int h = 0; h < 2; h++)
              sacc[t][h] = _mm256_add_epi16(sacc[t][h], _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], alo),
                                                                          _mm256_maddubs_epi16(hi[h], ahi)));
          }
        }
        for (int t = 0; t < TM; t++)
          for (int h = 0; h < 2; h++) gacc[t][h] = _mm256_add_epi32(gacc[t][h], _mm256_madd_epi16(sacc[t][h], ones));
      }
      for (int h = 0; h < 2; h++) {   // sum (q s + m) a = s sum(q a) + m sum(a), as the AVX-512 tile
        const __m256 ws = bf16x8_to_fp32(s + g * 2 * kRows + 8 * h), wm = bf16x8_to_fp32(s + g * 2 * kRows + kRows + 8 * h);
        for (int t = 0; t < TM; t++) {
          const __m256 as = _mm256_set1_ps(a[t].scale[g]), asum = _mm256_set1_ps(a[t].scale[g] * float(a[t].qsum[g]));
          acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(gacc[t][h]), _mm256_mul_ps(ws, as), _mm256_fmadd_ps(wm, asum, acc[t][h]));
        }
      }
    }
    store_half<TM>(acc, out, rb);
  }
}

}  // namespace cpu_moe

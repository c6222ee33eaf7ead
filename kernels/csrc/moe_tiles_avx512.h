// AVX-512 tile kernels over the packed layouts of moe_tiles.h: one zmm = one 16-row block step.
// int8 uses VNNI vpdpwssd (s16 x s16 -> s32, two k per lane), int4 vpdpbusd (u8 x s8, four k); bf16 uses vdpbf16ps when the build has
// AVX512_BF16, else widens bf16 to fp32 and uses FMA. Accumulators: [TM][kRB] zmm in registers, TM <= 8
// (fp32/bf16: the fp32 sums; int8/int4: the int32 sums, their fp32 sums in the tile's output).
#pragma once
#include <immintrin.h>

#include <algorithm>

#include "moe_tiles.h"

namespace cpu_moe {

// Weight-stream prefetch distances (A/B-measured on Zen 5: -12% time at T=1, -25% at T=64).
constexpr int kPrefetchInt4 = 2048, kPrefetchInt8 = 4096, kPrefetchBf16 = 4096;

// The line `near` bytes ahead in both streams into L1, and the same line of the caller's next blocks
// (WeightBlock::ahead, set for the first tile over a pair) into L2: the later tiles, which re-read the
// pair from cache for more tokens, leave DRAM to the next pair.
inline void prefetch_weights(const WeightBlock* wb, const void* p0, const void* p1, int near) {
  _mm_prefetch(static_cast<const char*>(p0) + near, _MM_HINT_T0);
  _mm_prefetch(static_cast<const char*>(p1) + near, _MM_HINT_T0);
  if (wb[0].ahead) {
    _mm_prefetch(static_cast<const char*>(p0) + wb[0].ahead, _MM_HINT_T1);
    _mm_prefetch(static_cast<const char*>(p1) + wb[1].ahead, _MM_HINT_T1);
  }
}

inline __m512 bf16x16_to_fp32(const void* p) {
  __m256i h = _mm256_loadu_si256(static_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <int TM>
inline void store_tile(const __m512 (&acc)[TM][kRB], float* out) {
  for (int t = 0; t < TM; t++)
    for (int rb = 0; rb < kRB; rb++) _mm512_storeu_ps(out + t * kRB * kRows + rb * kRows, acc[t][rb]);
}

template <int TM>
inline void tile_fp32(const WeightBlock* wb, const ActRow* a, int64_t Kp, int, float* out) {
  const float* w0 = static_cast<const float*>(wb[0].q);   // [Kp][16]
  const float* w1 = static_cast<const float*>(wb[1].q);
  __m512 acc[TM][kRB];
  for (int t = 0; t < TM; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < Kp; k++) {
    const __m512 v0 = _mm512_loadu_ps(w0 + k * kRows), v1 = _mm512_loadu_ps(w1 + k * kRows);
    for (int t = 0; t < TM; t++) {
      const __m512 av = _mm512_set1_ps(static_cast<const float*>(a[t].q)[k]);
      acc[t][0] = _mm512_fmadd_ps(v0, av, acc[t][0]);
      acc[t][1] = _mm512_fmadd_ps(v1, av, acc[t][1]);
    }
  }
  store_tile<TM>(acc, out);
}

// kFp32Act: activations stay fp32 (bf16 weights widened in registers, FMA): exact fp32 math on bf16 weights.
template <int TM, bool kFp32Act = false>
inline void tile_bf16(const WeightBlock* wb, const ActRow* a, int64_t Kp, int, float* out) {
  const uint16_t* w0 = static_cast<const uint16_t*>(wb[0].q);   // [Kp/2][16][2]
  const uint16_t* w1 = static_cast<const uint16_t*>(wb[1].q);
  __m512 acc[TM][kRB];
  for (int t = 0; t < TM; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < Kp; k += 2) {
    prefetch_weights(wb, w0 + k * kRows, w1 + k * kRows, kPrefetchBf16);
    const __m512i v0 = _mm512_loadu_si512(w0 + k * kRows), v1 = _mm512_loadu_si512(w1 + k * kRows);
#ifdef __AVX512BF16__
    if constexpr (!kFp32Act) {
      for (int t = 0; t < TM; t++) {
        const __m512i av = _mm512_set1_epi32(load_i32(static_cast<const uint16_t*>(a[t].q) + k));
        acc[t][0] = _mm512_dpbf16_ps(acc[t][0], (__m512bh)v0, (__m512bh)av);
        acc[t][1] = _mm512_dpbf16_ps(acc[t][1], (__m512bh)v1, (__m512bh)av);
      }
      continue;
    }
#endif
    const __m512i hi_mask = _mm512_set1_epi32(int32_t(0xFFFF0000u));
    const __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16));   // even k of each pair
    const __m512 o0 = _mm512_castsi512_ps(_mm512_and_si512(v0, hi_mask));
    const __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16));
    const __m512 o1 = _mm512_castsi512_ps(_mm512_and_si512(v1, hi_mask));
    for (int t = 0; t < TM; t++) {
      __m512 ae, ao;
      if constexpr (kFp32Act) {
        const float* ap = static_cast<const float*>(a[t].q) + k;
        ae = _mm512_set1_ps(ap[0]), ao = _mm512_set1_ps(ap[1]);
      } else {
        const uint16_t* ap = static_cast<const uint16_t*>(a[t].q) + k;
        ae = _mm512_set1_ps(bf16_to_float(ap[0])), ao = _mm512_set1_ps(bf16_to_float(ap[1]));
      }
      acc[t][0] = _mm512_fmadd_ps(o0, ao, _mm512_fmadd_ps(e0, ae, acc[t][0]));
      acc[t][1] = _mm512_fmadd_ps(o1, ao, _mm512_fmadd_ps(e1, ae, acc[t][1]));
    }
  }
  store_tile<TM>(acc, out);
}

// VNNI dot products through inline asm. The instruction overwrites its accumulator, and with the intrinsics
// GCC 12 copies every accumulator of a tile to another register (spilling some) on each k step: the int8 tiles
// ran at about half of VNNI's rate (BENCHMARKS.md, "8-token int8/int4 tiles").
inline __m512i dpwssd(__m512i acc, __m512i w, __m512i a) {   // acc += pairs of s16 w * s16 a
  asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(a));
  return acc;
}
inline __m512i dpbusd(__m512i acc, __m512i w, __m512i a) {   // acc += quads of u8 w * s8 a
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(a));
  return acc;
}

// The int8/int4 tiles keep only their int32 sums in registers ([TM][kRB] zmm, 16 at TM = 8) and their fp32 sums
// in `out` (L1), so a weight step feeds 8 tokens: twice the products per weight load and unpack of 4-token tiles,
// and 16 independent dot-product chains, enough to hide VNNI's latency (measured on Zen 5: 1.1 ns, one issued
// per 0.14 ns).
// The fp32 steps are the same ops in the same order as with register accumulators: the same bits.
template <int TM>
inline void zero_tile(float* out) {
  for (int i = 0; i < TM * kRB; i++) _mm512_storeu_ps(out + i * kRows, _mm512_setzero_ps());
}

template <int TM>
inline void tile_int8(const WeightBlock* wb, const ActRow* a, int64_t Kp, int, float* out) {
  const int8_t* w0 = static_cast<const int8_t*>(wb[0].q);   // [Kp/2][16][2]
  const int8_t* w1 = static_cast<const int8_t*>(wb[1].q);
  zero_tile<TM>(out);
  for (int64_t k0 = 0; k0 < Kp; k0 += kFlushK) {
    __m512i iacc[TM][kRB];
    for (int t = 0; t < TM; t++) iacc[t][0] = iacc[t][1] = _mm512_setzero_si512();
    const int64_t k1 = std::min<int64_t>(k0 + kFlushK, Kp);
    for (int64_t k = k0; k < k1; k += 2) {   // s8 weights widened to s16, then s16 x s16 pairs (vpdpwssd)
      if (k % 4 == 0) {   // one 64-byte line per two steps
        prefetch_weights(wb, w0 + k * kRows, w1 + k * kRows, kPrefetchInt8);
      }
      const __m512i v0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + k * kRows)));
      const __m512i v1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + k * kRows)));
      for (int t = 0; t < TM; t++) {
        const __m512i av = _mm512_set1_epi32(load_i32(static_cast<const int16_t*>(a[t].q) + k));
        iacc[t][0] = dpwssd(iacc[t][0], v0, av);
        iacc[t][1] = dpwssd(iacc[t][1], v1, av);
      }
    }
    for (int t = 0; t < TM; t++)
      for (int rb = 0; rb < kRB; rb++) {
        float* o = out + (t * kRB + rb) * kRows;
        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), _mm512_cvtepi32_ps(iacc[t][rb])));
      }
  }
  for (int rb = 0; rb < kRB; rb++) {
    const __m512 ws = _mm512_loadu_ps(static_cast<const float*>(wb[rb].scale));
    for (int t = 0; t < TM; t++) {
      float* o = out + (t * kRB + rb) * kRows;
      _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_loadu_ps(o), _mm512_mul_ps(ws, _mm512_set1_ps(a[t].scale[0]))));
    }
  }
}

template <int TM>
inline void tile_int4(const WeightBlock* wb, const ActRow* a, int64_t Kp, int G, float* out) {
  const uint8_t* w0 = static_cast<const uint8_t*>(wb[0].q);   // [Kp/8][16][4], two nibbles per byte
  const uint8_t* w1 = static_cast<const uint8_t*>(wb[1].q);
  const uint16_t* s0 = static_cast<const uint16_t*>(wb[0].scale);   // [Kp/G][2][16] bf16: scale, min
  const uint16_t* s1 = static_cast<const uint16_t*>(wb[1].scale);
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  zero_tile<TM>(out);
  for (int64_t g = 0; g < Kp / G; g++) {
    _mm_prefetch(reinterpret_cast<const char*>(s0 + g * 2 * kRows) + kPrefetchScales, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(s1 + g * 2 * kRows) + kPrefetchScales, _MM_HINT_T0);
    __m512i gacc[TM][kRB];
    for (int t = 0; t < TM; t++) gacc[t][0] = gacc[t][1] = _mm512_setzero_si512();
    for (int64_t k = g * G; k < (g + 1) * G; k += 8) {
      prefetch_weights(wb, w0 + k * 8, w1 + k * 8, kPrefetchInt4);
      const __m512i v0 = _mm512_loadu_si512(w0 + k * 8), v1 = _mm512_loadu_si512(w1 + k * 8);
      const __m512i lo0 = _mm512_and_si512(v0, nibble), hi0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), nibble);
      const __m512i lo1 = _mm512_and_si512(v1, nibble), hi1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), nibble);
      for (int t = 0; t < TM; t++) {
        const int8_t* ap = static_cast<const int8_t*>(a[t].q) + k;
        const __m512i alo = _mm512_set1_epi32(load_i32(ap)), ahi = _mm512_set1_epi32(load_i32(ap + 4));
        gacc[t][0] = dpbusd(dpbusd(gacc[t][0], lo0, alo), hi0, ahi);
        gacc[t][1] = dpbusd(dpbusd(gacc[t][1], lo1, alo), hi1, ahi);
      }
    }
    const __m512 ws[kRB] = {bf16x16_to_fp32(s0 + g * 2 * kRows), bf16x16_to_fp32(s1 + g * 2 * kRows)};
    const __m512 wm[kRB] = {bf16x16_to_fp32(s0 + g * 2 * kRows + kRows), bf16x16_to_fp32(s1 + g * 2 * kRows + kRows)};
    for (int t = 0; t < TM; t++) {   // sum (q s + m) a = s sum(q a) + m sum(a)
      const __m512 as = _mm512_set1_ps(a[t].scale[g]), asum = _mm512_set1_ps(a[t].scale[g] * float(a[t].qsum[g]));
      for (int rb = 0; rb < kRB; rb++) {
        float* o = out + (t * kRB + rb) * kRows;
        _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(gacc[t][rb]), _mm512_mul_ps(ws[rb], as),
                                            _mm512_fmadd_ps(wm[rb], asum, _mm512_loadu_ps(o))));
      }
    }
  }
}

}  // namespace cpu_moe

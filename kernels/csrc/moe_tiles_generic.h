// Portable tile kernels: plain loops over the packed layouts of moe_tiles.h.
// Built with no ISA flags for the "generic" variant (the "avx2" one has moe_tiles_avx2.h); the compiler
// vectorises the 16-row inner loops. Output: out [TM][kRB * 16] fp32.
#pragma once
#include <algorithm>

#include "moe_tiles.h"

namespace cpu_moe {

template <int TM>
inline void tile_fp32(const WeightBlock* wb, const ActRow* a, int64_t Kp, int, float* out) {
  for (int rb = 0; rb < kRB; rb++) {
    const float* w = static_cast<const float*>(wb[rb].q);               // [Kp][16]
    float acc[TM][kRows] = {};
    for (int64_t k = 0; k < Kp; k++)
      for (int t = 0; t < TM; t++) {
        const float av = static_cast<const float*>(a[t].q)[k];
        for (int r = 0; r < kRows; r++) acc[t][r] += w[k * kRows + r] * av;
      }
    for (int t = 0; t < TM; t++)
      for (int r = 0; r < kRows; r++) out[t * kRB * kRows + rb * kRows + r] = acc[t][r];
  }
}

template <int TM, bool kFp32Act = false>   // kFp32Act: fp32 activations (see moe_tiles_avx512.h)
inline void tile_bf16(const WeightBlock* wb, const ActRow* a, int64_t Kp, int, float* out) {
  for (int rb = 0; rb < kRB; rb++) {
    const uint16_t* w = static_cast<const uint16_t*>(wb[rb].q);         // [Kp/2][16][2]
    float acc[TM][kRows] = {};
    for (int64_t k = 0; k < Kp; k += 2)
      for (int t = 0; t < TM; t++) {
        float a0, a1;
        if constexpr (kFp32Act) {
          a0 = static_cast<const float*>(a[t].q)[k], a1 = static_cast<const float*>(a[t].q)[k + 1];
        } else {
          const uint16_t* ap = static_cast<const uint16_t*>(a[t].q) + k;
          a0 = bf16_to_float(ap[0]), a1 = bf16_to_float(ap[1]);
        }
        for (int r = 0; r < kRows; r++)
          acc[t][r] += bf16_to_float(w[k * kRows + 2 * r]) * a0 + bf16_to_float(w[k * kRows + 2 * r + 1]) * a1;
      }
    for (int t = 0; t < TM; t++)
      for (int r = 0; r < kRows; r++) out[t * kRB * kRows + rb * kRows + r] = acc[t][r];
  }
}

template <int TM>
inline void tile_int8(const WeightBlock* wb, const ActRow* a, int64_t Kp, int, float* out) {
  for (int rb = 0; rb < kRB; rb++) {
    const int8_t* w = static_cast<const int8_t*>(wb[rb].q);             // [Kp/2][16][2]
    float acc[TM][kRows] = {};
    for (int64_t k0 = 0; k0 < Kp; k0 += kFlushK) {
      int32_t iacc[TM][kRows] = {};
      for (int64_t k = k0; k < std::min<int64_t>(k0 + kFlushK, Kp); k += 2)
        for (int t = 0; t < TM; t++) {
          const int16_t* ap = static_cast<const int16_t*>(a[t].q) + k;
          for (int r = 0; r < kRows; r++) iacc[t][r] += ap[0] * w[k * kRows + 2 * r] + ap[1] * w[k * kRows + 2 * r + 1];
        }
      for (int t = 0; t < TM; t++)
        for (int r = 0; r < kRows; r++) acc[t][r] += float(iacc[t][r]);
    }
    const float* ws = static_cast<const float*>(wb[rb].scale);
    for (int t = 0; t < TM; t++)
      for (int r = 0; r < kRows; r++) out[t * kRB * kRows + rb * kRows + r] = acc[t][r] * (ws[r] * a[t].scale[0]);
  }
}

template <int TM>
inline void tile_int4(const WeightBlock* wb, const ActRow* a, int64_t Kp, int G, float* out) {
  for (int rb = 0; rb < kRB; rb++) {
    const uint8_t* w = static_cast<const uint8_t*>(wb[rb].q);           // [Kp/8][16][4]
    const uint16_t* ws = static_cast<const uint16_t*>(wb[rb].scale);    // [Kp/G][2][16] bf16: scale, min
    float acc[TM][kRows] = {};
    for (int64_t g = 0; g < Kp / G; g++) {
      int32_t gacc[TM][kRows] = {};
      for (int64_t k = g * G; k < (g + 1) * G; k += 8)
        for (int t = 0; t < TM; t++) {
          const int8_t* ap = static_cast<const int8_t*>(a[t].q) + k;
          for (int r = 0; r < kRows; r++) {
            const uint8_t* wr = w + k * 8 + 4 * r;
            int32_t s = 0;
            for (int kk = 0; kk < 4; kk++) s += (wr[kk] & 15) * ap[kk] + (wr[kk] >> 4) * ap[4 + kk];
            gacc[t][r] += s;
          }
        }
      for (int t = 0; t < TM; t++) {   // sum (q s + m) a = s sum(q a) + m sum(a)
        const float as = a[t].scale[g], asum = as * float(a[t].qsum[g]);
        for (int r = 0; r < kRows; r++)
          acc[t][r] += float(gacc[t][r]) * (bf16_to_float(ws[g * 2 * kRows + r]) * as) +
                       bf16_to_float(ws[g * 2 * kRows + kRows + r]) * asum;
      }
    }
    for (int t = 0; t < TM; t++)
      for (int r = 0; r < kRows; r++) out[t * kRB * kRows + rb * kRows + r] = acc[t][r];
  }
}

}  // namespace cpu_moe

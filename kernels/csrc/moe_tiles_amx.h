// AMX tile kernels (Intel AMX-INT8): 16 tokens x 32 output rows per call, for int8 and int4 weights.
//
// Why they may replace the VNNI tiles for some tokens only: integer products and sums are exact, so the int32
// sums here equal those of the VNNI tiles in moe_tiles_avx512.h bit for bit, and the fp32 epilogue below repeats
// theirs op for op. A token's result therefore does not depend on whether its expert got >= 16 tokens (AMX) or
// fewer (VNNI): batch invariance holds. (bf16 has no such path: TDPBF16PS rounds differently from VDPBF16PS.)
//
// int8: AMX has no s16 x s8 product, so each s16 activation splits as a = 256 * hi + lo (hi s8, lo u8):
//   sum(w a) = 256 * sum(w hi) [TDPBSSD] + sum(w lo) [TDPBUSD], flushed to fp32 every kFlushK k as the VNNI tile.
// int4: s8 activations x u8 nibbles [TDPBSUD], one int32 sum per group, then the same scale/min epilogue.
// B tiles hold 4 k per 32-bit lane ([K/4][16][4]); the packed blocks hold 2 (int8) or nibble pairs (int4), so
// every 64-k step first repacks its weights into a 1 KB tile buffer (one vpermw, or one nibble split, per 64 B).
//
// Tile registers: tmm0-3 C (int8: block 0 hi, lo, block 1 hi, lo; int4: block 0, 1), tmm4-5 A (int8: hi, lo;
// int4: tmm4), tmm6-7 B (block 0, 1).
// Requires: the 16 activation rows consecutive in one buffer, ActRow::stride apart; int8 rows carry the split
// copy after their s16 values (quantize_rows with amx_split): s16 [Kp], hi s8 [Kp64], lo u8 [Kp64], zero-padded.
#pragma once
#include <immintrin.h>

#include <atomic>

#include "moe_tiles_avx512.h"

namespace cpu_moe {

constexpr int kAmxTM = 16;
constexpr int64_t kAmxK = 64;   // k per int8 tile step: one 64-byte A row
inline std::atomic<int64_t> amx_tile_calls{0};   // lets tests see that the AMX tiles ran

struct alignas(64) TileConfig {   // palette 1 (see the Intel SDM, LDTILECFG)
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Loaded on every call: torch's oneDNN may load its own configuration on the same thread in between.
inline void load_tile_config(int a_bytes) {
  TileConfig cfg;
  for (int i = 0; i < 8; i++) cfg.rows[i] = 16, cfg.colsb[i] = 64;
  cfg.colsb[4] = cfg.colsb[5] = uint16_t(a_bytes);   // A: 16 tokens x a_bytes k
  cfg.rows[6] = cfg.rows[7] = uint8_t(a_bytes / 4);   // B: a_bytes / 4 rows x 16 columns x 4 k
  _tile_loadconfig(&cfg);
}

// int8 block [Kp/2][16][2] -> B tile [16][16][4] for k .. k + 63 (zeros past Kp).
inline void repack_int8(const int8_t* w, int64_t k, int64_t Kp, int8_t* tile) {
  alignas(64) static const uint16_t kInterleave[32] = {   // out lane c = (pair row 2j col c, pair row 2j+1 col c)
      0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kInterleave);
  for (int r = 0; r < 16; r++) {
    const int64_t kk = k + 4 * r;                        // this row holds k kk .. kk + 3: pair rows kk/2, kk/2 + 1
    const int8_t* src = w + kk * kRows;
    _mm_prefetch(reinterpret_cast<const char*>(src) + kPrefetchInt8, _MM_HINT_T0);
    const __m512i v = kk + 4 <= Kp ? _mm512_loadu_si512(src)
                    : kk < Kp      ? _mm512_maskz_loadu_epi16(0xFFFF, src)   // Kp is even: one pair row left
                                   : _mm512_setzero_si512();
    _mm512_store_si512(tile + r * 64, _mm512_permutexvar_epi16(idx, v));
  }
}

inline void tile_int8_amx(const WeightBlock* wb, const ActRow* a, int64_t Kp, int, float* out) {
  const int8_t* w[kRB] = {static_cast<const int8_t*>(wb[0].q), static_cast<const int8_t*>(wb[1].q)};
  const uint8_t* a_hi = static_cast<const uint8_t*>(a[0].q) + 2 * Kp;   // [16][Kp64] at stride a[0].stride
  const uint8_t* a_lo = a_hi + round_up64(Kp);
  // Two B buffers: step k's tiles load from one while step k + 64 is repacked into the other, so a tile load never
  // waits for the vector stores just issued to reach L1 (measured: that wait doubled the step time).
  alignas(64) int8_t b[2][kRB][16 * 64];
  alignas(64) int32_t c[2 * kRB][kAmxTM * kRows];                       // hi, lo per block: [16 tokens][16 rows]
  __m512 acc[kAmxTM][kRB];
  for (int t = 0; t < kAmxTM; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  amx_tile_calls.fetch_add(1, std::memory_order_relaxed);
  load_tile_config(kAmxK);
  repack_int8(w[0], 0, Kp, b[0][0]);
  repack_int8(w[1], 0, Kp, b[0][1]);
  for (int64_t k = 0; k < Kp; k += kAmxK) {
    const int cur = int(k / kAmxK) & 1;
    if (k % kFlushK == 0) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
    }
    if (k + kAmxK < Kp) {
      repack_int8(w[0], k + kAmxK, Kp, b[cur ^ 1][0]);
      repack_int8(w[1], k + kAmxK, Kp, b[cur ^ 1][1]);
    }
    _tile_loadd(4, a_hi + k, a[0].stride);
    _tile_loadd(5, a_lo + k, a[0].stride);
    _tile_loadd(6, b[cur][0], 64);
    _tile_loadd(7, b[cur][1], 64);
    _tile_dpbssd(0, 4, 6);
    _tile_dpbusd(1, 5, 6);
    _tile_dpbssd(2, 4, 7);
    _tile_dpbusd(3, 5, 7);
    if ((k + kAmxK) % kFlushK != 0 && k + kAmxK < Kp) continue;
    _tile_stored(0, c[0], 64);   // end of a kFlushK chunk: the VNNI tile's int32 sums, then its fp32 flush
    _tile_stored(1, c[1], 64);
    _tile_stored(2, c[2], 64);
    _tile_stored(3, c[3], 64);
    for (int t = 0; t < kAmxTM; t++)
      for (int rb = 0; rb < kRB; rb++) {
        const __m512i hi = _mm512_load_si512(c[2 * rb] + t * kRows), lo = _mm512_load_si512(c[2 * rb + 1] + t * kRows);
        acc[t][rb] = _mm512_add_ps(acc[t][rb], _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(hi, 8), lo)));
      }
  }
  for (int rb = 0; rb < kRB; rb++) {
    const __m512 ws = _mm512_loadu_ps(static_cast<const float*>(wb[rb].scale));
    for (int t = 0; t < kAmxTM; t++) acc[t][rb] = _mm512_mul_ps(acc[t][rb], _mm512_mul_ps(ws, _mm512_set1_ps(a[t].scale[0])));
  }
  store_tile<kAmxTM>(acc, out);
}

// k per int4 tile step: the largest multiple of 8 (one packed 64-byte line) up to 64 that divides the group.
inline int int4_step(int G) {
  for (int kt = 64; kt > 8; kt -= 8)
    if (G % kt == 0) return kt;
  return 8;
}

// int4 block [Kp/8][16][4] (two nibbles per byte) -> B tile [kt/4][16][4] for k .. k + kt - 1.
inline void repack_int4(const uint8_t* w, int64_t k, int kt, uint8_t* tile) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (int j = 0; j < kt / 8; j++) {   // line j: low nibbles = k + 8j .. +3, high nibbles = k + 8j + 4 .. +7
    const uint8_t* src = w + (k + 8 * j) * 8;
    _mm_prefetch(reinterpret_cast<const char*>(src) + kPrefetchInt4, _MM_HINT_T0);
    const __m512i v = _mm512_loadu_si512(src);
    _mm512_store_si512(tile + 2 * j * 64, _mm512_and_si512(v, nibble));
    _mm512_store_si512(tile + (2 * j + 1) * 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
  }
}

inline void tile_int4_amx(const WeightBlock* wb, const ActRow* a, int64_t Kp, int G, float* out) {
  const uint8_t* w[kRB] = {static_cast<const uint8_t*>(wb[0].q), static_cast<const uint8_t*>(wb[1].q)};
  const uint16_t* s[kRB] = {static_cast<const uint16_t*>(wb[0].scale), static_cast<const uint16_t*>(wb[1].scale)};
  const uint8_t* a0 = static_cast<const uint8_t*>(a[0].q);              // [16][Kp] s8 at stride a[0].stride
  const int kt = int4_step(G);
  alignas(64) uint8_t b[2][kRB][16 * 64];                               // double-buffered as in tile_int8_amx
  alignas(64) int32_t c[kRB][kAmxTM * kRows];
  __m512 acc[kAmxTM][kRB];
  for (int t = 0; t < kAmxTM; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  amx_tile_calls.fetch_add(1, std::memory_order_relaxed);
  load_tile_config(kt);
  repack_int4(w[0], 0, kt, b[0][0]);
  repack_int4(w[1], 0, kt, b[0][1]);
  for (int64_t k = 0; k < Kp; k += kt) {
    const int cur = int(k / kt) & 1;
    if (k % G == 0) {
      _tile_zero(0);
      _tile_zero(1);
    }
    if (k + kt < Kp) {
      repack_int4(w[0], k + kt, kt, b[cur ^ 1][0]);
      repack_int4(w[1], k + kt, kt, b[cur ^ 1][1]);
    }
    _tile_loadd(4, a0 + k, a[0].stride);
    _tile_loadd(6, b[cur][0], 64);
    _tile_loadd(7, b[cur][1], 64);
    _tile_dpbsud(0, 4, 6);
    _tile_dpbsud(1, 4, 7);
    if ((k + kt) % G != 0) continue;
    _tile_stored(0, c[0], 64);   // end of a group: the VNNI tile's epilogue, op for op
    _tile_stored(1, c[1], 64);
    const int64_t g = k / G;
    __m512 ws[kRB], wm[kRB];
    for (int rb = 0; rb < kRB; rb++)
      ws[rb] = bf16x16_to_fp32(s[rb] + g * 2 * kRows), wm[rb] = bf16x16_to_fp32(s[rb] + g * 2 * kRows + kRows);
    for (int t = 0; t < kAmxTM; t++) {
      const __m512 as = _mm512_set1_ps(a[t].scale[g]), asum = _mm512_set1_ps(a[t].scale[g] * float(a[t].qsum[g]));
      for (int rb = 0; rb < kRB; rb++)
        acc[t][rb] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c[rb] + t * kRows)), _mm512_mul_ps(ws[rb], as),
                                     _mm512_fmadd_ps(wm[rb], asum, acc[t][rb]));
    }
  }
  store_tile<kAmxTM>(acc, out);
}

}  // namespace cpu_moe

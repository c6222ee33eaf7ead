// Tile kernels of the fused CPU MoE: out[t, r] = dot(weight row r, activation row t), dequantized to fp32.
//
// Legend: TM tokens per tile (fp32, bf16: 8, 4, 2, 1; int8, int4: 8, 4, 3, 2, 1; AMX: 16), RB = 2 weight blocks
//         per tile, 16 rows per block, Kp the padded reduction length, G the int4 group size.
// Packed weight blocks (16 output rows each; see kernels/quantize.py, which writes them):
//   fp32 [Kp][16]            bf16 [Kp/2][16][2]  (a pair of k per 32-bit lane)
//   int8 [Kp/2][16][2] s8    + scale fp32 [16]
//   int4 [Kp/8][16][4] u8: low nibble = q[k], high nibble = q[k + 4] (k = 8j .. 8j+3), q in [0, 15]
//                            + scale and min bf16 [Kp/G][2][16]: w = q * scale + min
// Activation rows (written by quantize_rows in cpu_moe.cpp):
//   fp32 [Kp]; bf16 [Kp]; int8 path s16 [Kp] = round(a / scale), one scale (amax / 32767) per row;
//   int4 path s8 [Kp] = round(a / scale_g), one scale (amax / 127) and one sum of q per group of G.
//   int8 weights get 16-bit activations because 8-bit ones lose too much on LLM hidden states (their
//   outlier channels); int4 weights lose far more themselves, so they take the faster 8-bit path.
// Accumulation: exact int32 over kFlushK k (int8) or a group (int4), then fp32; fp32 for fp32/bf16.
#pragma once
#include <cstdint>
#include <cstring>

namespace cpu_moe {

// bf16_fp32act: bf16 weights times fp32 activations (dense linears: fp32 arithmetic on exact bf16 checkpoints).
enum class WeightType : int { fp32 = 0, bf16 = 1, int8 = 2, int4 = 3, bf16_fp32act = 4 };

constexpr int kRows = 16;   // rows per packed block
constexpr int kRB = 2;      // blocks per tile: gate + up in the first GEMM, two H blocks in the second
constexpr int kFlushK = 256;  // int8: 256 * 127 * 32767 < 2^31, so int32 sums over 256 k never overflow
// int4 tiles prefetch their scale/min stream (64 bytes per group and block) 4 groups ahead
// (A/B on Zen 4: 1.05-1.12x at T=1 and 8).
constexpr int kPrefetchScales = 256;

struct WeightBlock {        // one packed block of 16 rows
  const void* q;
  const void* scale;        // int8: fp32 [16]; int4: bf16 [Kp/G][2][16] (scale, min); else unused
  int64_t ahead = 0;        // bytes to the same line of the block the caller runs next (0: none)
};

struct ActRow {             // one activation row
  const void* q;
  const float* scale;       // int8: [1]; int4: [Kp/G]
  const int32_t* qsum;      // int4: [Kp/G]
  int64_t stride;           // bytes to the next row of its buffer (the AMX tiles load 16 consecutive rows)
};

inline int64_t round_up64(int64_t n) { return (n + 63) / 64 * 64; }   // AMX rows: whole 64-byte lines
inline int32_t load_i32(const void* p) { int32_t v; std::memcpy(&v, p, 4); return v; }
inline float bf16_to_float(uint16_t h) { uint32_t u = uint32_t(h) << 16; float f; std::memcpy(&f, &u, 4); return f; }

}  // namespace cpu_moe

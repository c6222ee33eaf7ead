// Rotary embedding on a step's new queries and keys, and the keys and values into their cache slots, in one
// call (vLLM's rotary + reshape_and_cache): what torch ran as about ten calls per layer.
//
// Legend: N new tokens, Hq query heads, Hkv kv heads, D head dim (even).
// Inputs (checked in kernels/cpu_attention.py): q fp32 [N, Hq, D], k, v fp32 [N, Hkv, D], each row contiguous
// but rows strided (views of the fused qkv output); cos, sin fp32 [N, D] (sin's first half negated, as
// backend/models/layers.py's RotaryEmbedding gives them); slots int64 [N]; caches [num_slots, Hkv, D] fp32 or
// bf16. Output: q_out fp32 [N, Hq, D] contiguous (what the paged kernel reads).
// rotated[d] = x[d] * cos[d] + x[(d + D/2) % D] * sin[d]: transformers' x * cos + rotate_half(x) * sin with
// rotate_half(x) = cat(-x2, x1), as two products and one sum, each rounded to fp32 (the function is built
// without FMA contraction), so the bits are torch's. bf16 caches round to nearest even, as torch's .to().
// Reference: backend/models/layers.py apply_rotary, then index_put into the cache.
#include "rotary_kv.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace cpu_attention {
namespace {

// fp32 -> bf16 as torch's .to(torch.bfloat16) rounds: to nearest even; a NaN stays a NaN (c10's scalar 0x7FC0).
inline uint16_t to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

__attribute__((optimize("fp-contract=off"))) void rotate(const float* x, const float* cos, const float* sin, int64_t D,
                                                         float* out) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < half; d++) {
    const float a = x[d] * cos[d], b = x[d + half] * sin[d];
    out[d] = a + b;
  }
  for (int64_t d = half; d < D; d++) {
    const float a = x[d] * cos[d], b = x[d - half] * sin[d];
    out[d] = a + b;
  }
}

}  // namespace

void rotary_write_kv(bool cache_bf16, int64_t N, int64_t Hq, int64_t Hkv, int64_t D, uintptr_t q_ptr, int64_t q_stride,
                     uintptr_t k_ptr, int64_t k_stride, uintptr_t v_ptr, int64_t v_stride, uintptr_t cos_ptr,
                     uintptr_t sin_ptr, uintptr_t slots_ptr, int64_t num_slots, uintptr_t k_cache_ptr,
                     uintptr_t v_cache_ptr, uintptr_t q_out_ptr) {
  const int64_t* slots = reinterpret_cast<const int64_t*>(slots_ptr);
  for (int64_t n = 0; n < N; n++)
    if (slots[n] < 0 || slots[n] >= num_slots)
      throw std::out_of_range("slot_mapping[" + std::to_string(n) + "] = " + std::to_string(slots[n]) +
                              " is outside the cache's " + std::to_string(num_slots) + " slots");
  const float* q = reinterpret_cast<const float*>(q_ptr);
  const float* k = reinterpret_cast<const float*>(k_ptr);
  const float* v = reinterpret_cast<const float*>(v_ptr);
  const float* cos = reinterpret_cast<const float*>(cos_ptr);   // [N, D]
  const float* sin = reinterpret_cast<const float*>(sin_ptr);
  float* q_out = reinterpret_cast<float*>(q_out_ptr);           // [N, Hq, D]
  const int64_t row = Hkv * D;
  std::vector<float> k_rot(row);
  for (int64_t n = 0; n < N; n++) {
    const float* c = cos + n * D;
    const float* s = sin + n * D;
    for (int64_t h = 0; h < Hq; h++) rotate(q + n * q_stride + h * D, c, s, D, q_out + (n * Hq + h) * D);
    for (int64_t h = 0; h < Hkv; h++) rotate(k + n * k_stride + h * D, c, s, D, k_rot.data() + h * D);
    const float* vn = v + n * v_stride;
    if (cache_bf16) {
      uint16_t* kc = reinterpret_cast<uint16_t*>(k_cache_ptr) + slots[n] * row;
      uint16_t* vc = reinterpret_cast<uint16_t*>(v_cache_ptr) + slots[n] * row;
      for (int64_t i = 0; i < row; i++) kc[i] = to_bf16(k_rot[i]), vc[i] = to_bf16(vn[i]);
    } else {
      std::memcpy(reinterpret_cast<float*>(k_cache_ptr) + slots[n] * row, k_rot.data(), row * 4);
      std::memcpy(reinterpret_cast<float*>(v_cache_ptr) + slots[n] * row, vn, row * 4);
    }
  }
}

}  // namespace cpu_attention

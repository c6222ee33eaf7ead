// Rotary embedding and the KV-cache write of a step's new tokens, in one call on the CPU; see rotary_kv.cpp.
#pragma once
#include <cstdint>

namespace cpu_attention {
void rotary_write_kv(bool cache_bf16, int64_t N, int64_t Hq, int64_t Hkv, int64_t D, uintptr_t q_ptr, int64_t q_stride,
                     uintptr_t k_ptr, int64_t k_stride, uintptr_t v_ptr, int64_t v_stride, uintptr_t cos_ptr,
                     uintptr_t sin_ptr, uintptr_t slots_ptr, int64_t num_slots, uintptr_t k_cache_ptr,
                     uintptr_t v_cache_ptr, uintptr_t q_out_ptr);
}

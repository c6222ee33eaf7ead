// Paged attention on the CPU; see paged_attention.cpp.
#pragma once
#include <cstdint>

namespace cpu_attention {
void paged_attention_decode(bool cache_bf16, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t S,
                            int64_t max_blocks, double scale, uintptr_t q_ptr, uintptr_t k_cache_ptr,
                            uintptr_t v_cache_ptr, uintptr_t block_tables_ptr, uintptr_t context_lens_ptr,
                            uintptr_t out_ptr);
}

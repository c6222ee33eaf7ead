// Greedy sampling's argmax over the rows of a logits matrix on the CPU; see argmax.cpp.
#pragma once
#include <cstdint>

namespace cpu_sampling {
void argmax_rows(int64_t R, int64_t V, uintptr_t logits_ptr, uintptr_t out_ptr);
}

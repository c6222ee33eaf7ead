// RMSNorm over the rows of a matrix on the CPU; see rms_norm.cpp.
#pragma once
#include <cstdint>

namespace cpu_norm {
void rms_norm(int64_t T, int64_t H, double eps, uintptr_t x_ptr, uintptr_t weight_ptr, uintptr_t out_ptr);
}

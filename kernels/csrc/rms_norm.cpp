// RMSNorm, one row at a time: out[t] = weight * (x[t] * (1 / sqrt(mean(x[t]^2) + eps))).
//
// Legend: T rows, H features. x fp32 [T, H], weight fp32 [H], out fp32 [T, H] (contiguous, checked in
// kernels/cpu_norm.py). Why: torch runs this as 7 calls per norm, each on a cold cache in every layer
// (about 60 us per norm at batch 16); this is one call of a few microseconds.
// The op order is transformers' (normalize, then scale by the weight); only the sum of squares has its own
// order: 16 partial sums (one 512-bit register's lanes), combined pairwise. A row's result depends on that
// row alone. Reference: kernels/cpu_norm.py rms_norm_reference.
#include "rms_norm.h"

#include <cmath>

namespace cpu_norm {

void rms_norm(int64_t T, int64_t H, double eps, uintptr_t x_ptr, uintptr_t weight_ptr, uintptr_t out_ptr) {
  const float* x = reinterpret_cast<const float*>(x_ptr);        // [T, H]
  const float* w = reinterpret_cast<const float*>(weight_ptr);   // [H]
  float* out = reinterpret_cast<float*>(out_ptr);                // [T, H]
  constexpr int kLanes = 16;
  for (int64_t t = 0; t < T; t++) {
    const float* a = x + t * H;
    float acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= H; i += kLanes)
      for (int j = 0; j < kLanes; j++) acc[j] += a[i + j] * a[i + j];
    for (int j = 0; i < H; i++, j++) acc[j] += a[i] * a[i];
    for (int n = kLanes / 2; n > 0; n /= 2)
      for (int j = 0; j < n; j++) acc[j] += acc[j + n];
    const float r = 1.0f / std::sqrt(acc[0] / float(H) + float(eps));
    float* o = out + t * H;
    for (int64_t k = 0; k < H; k++) o[k] = w[k] * (a[k] * r);
  }
}

}  // namespace cpu_norm

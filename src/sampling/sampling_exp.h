// exp(x) for the sampler's weights (x <= 0: a logit minus the largest), with the same bits on
// the host and on a CUDA device: the host's std::exp and CUDA's expf may differ in the last bit,
// which would let a draw near a boundary pick another token on the GPU (Session::draw_token).
// Every multiply-add is an explicit fma (correctly rounded on both), so no compiler contraction
// changes a result. C++17, for the CUDA sources too.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define PDVM_HOST_DEVICE __host__ __device__
#else
#define PDVM_HOST_DEVICE
#endif

namespace pdvm {

// exp(x) = 2^k * e^r with k = round(x / ln 2), |r| <= ln 2 / 2, e^r by its Taylor series to the
// 7th power (relative error below 1e-8 before the final rounding); 0 below float's range.
PDVM_HOST_DEVICE inline float sampling_exp(float x) {
  if (!(x >= -104.0f)) return 0.0f;  // also NaN and -inf
  const float k = std::rint(x * 1.44269504f);
  float r = std::fma(-k, 0.693145751953125f, x);  // ln 2's leading bits: k * them is exact
  r = std::fma(-k, 1.42860677e-06f, r);
  float p = 1.0f / 5040.0f;
  p = std::fma(p, r, 1.0f / 720.0f);
  p = std::fma(p, r, 1.0f / 120.0f);
  p = std::fma(p, r, 1.0f / 24.0f);
  p = std::fma(p, r, 1.0f / 6.0f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  return std::ldexp(p, static_cast<int>(k));
}

}  // namespace pdvm

#undef PDVM_HOST_DEVICE

// RoPE of one head in place, shared by rope_kernel and the joined RoPE + KV store: thread i of
// the block rotates the adjacent pairs (2j, 2j + 1) for j = i, i + blockDim.x, ... < n_rot / 2
// (the GGUF "normal" convention) by pos * freq_base^(-2j / n_rot) (/ freq_factors[j]).
#pragma once

namespace pdvm::cuda {

__device__ __forceinline__ void rope_head(float* h, float pos, int n_rot, float freq_base,
                                          const float* __restrict__ freq_factors) {
  for (int i = threadIdx.x; i < n_rot / 2; i += blockDim.x) {
    float theta = pos * powf(freq_base, -2.0f * static_cast<float>(i) / static_cast<float>(n_rot));
    if (freq_factors) theta /= freq_factors[i];
    float s, c;
    sincosf(theta, &s, &c);
    const float x0 = h[2 * i], x1 = h[2 * i + 1];
    h[2 * i] = x0 * c - x1 * s;
    h[2 * i + 1] = x0 * s + x1 * c;
  }
}

}  // namespace pdvm::cuda

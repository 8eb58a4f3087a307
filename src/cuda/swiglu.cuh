// silu(gate) * up, the arithmetic every SwiGLU of the CUDA backend uses (its own kernel and the
// products that compute it), so that joined and separate ops give the same bits.
#pragma once

namespace pdvm::cuda {

__device__ __forceinline__ float silu_times(float gate, float up) { return gate / (1.0f + expf(-gate)) * up; }

}  // namespace pdvm::cuda

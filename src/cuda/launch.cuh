// Kernel launches with programmatic dependent launch (PDL): a kernel may be scheduled while
// the previous one in the stream drains, and waits in pdl_begin() until that one's writes are
// visible. This hides most of the launch gap between the ~16 small kernels of a decode layer.
// Every kernel launched with launch() must call pdl_begin() before touching memory that an
// earlier kernel writes, and before any early return (so completion stays transitive).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include "cuda/context.cuh"

namespace pdvm::cuda {

__device__ __forceinline__ void pdl_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  // Before sm_90 the launch attribute has no effect: stream order already serializes kernels.
}

// Warms L2 with a line the kernel will read soon (weights, which no kernel writes, so this is
// allowed before pdl_begin()).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Blocks for a grid-stride loop over n elements: enough to fill the device, no more.
inline int grid_for(int64_t n, int threads, int sm_count) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t{sm_count} * 16));
}

template <typename... Params, typename... Args>
void launch(const CudaContext& ctx, const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
            Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = ctx.stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attribute;
  config.numAttrs = ctx.programmatic_launch ? 1 : 0;
  const cudaError_t status = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (status != cudaSuccess) throw_cuda_error(status, name, __FILE__, __LINE__);
  if (!ctx.capturing) ++ctx.kernel_launches;
}

}  // namespace pdvm::cuda

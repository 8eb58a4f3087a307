// Kernel launches a recorded CUDA graph performs per replay (for launches-per-token figures).
#pragma once

#include <cuda_runtime.h>

namespace pdvm::cuda {

// Kernel nodes of `graph`, including those inside child graphs.
int kernel_node_count(cudaGraph_t graph);

}  // namespace pdvm::cuda

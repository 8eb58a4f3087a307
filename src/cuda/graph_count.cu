#include <vector>

#include "cuda/check.cuh"
#include "cuda/graph_count.cuh"

namespace pdvm::cuda {

int kernel_node_count(cudaGraph_t graph) {
  size_t n = 0;
  PDVM_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &n));
  std::vector<cudaGraphNode_t> nodes(n);
  if (n > 0) PDVM_CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &n));
  int kernels = 0;
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType type;
    PDVM_CUDA_CHECK(cudaGraphNodeGetType(node, &type));
    if (type == cudaGraphNodeTypeKernel) {
      ++kernels;
    } else if (type == cudaGraphNodeTypeGraph) {
      cudaGraph_t child = nullptr;
      PDVM_CUDA_CHECK(cudaGraphChildGraphNodeGetGraph(node, &child));
      kernels += kernel_node_count(child);
    }
  }
  return kernels;
}

}  // namespace pdvm::cuda

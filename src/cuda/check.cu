#include "cuda/check.cuh"

namespace pdvm::cuda {

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  std::string where = std::string(file);
  auto slash = where.find_last_of('/');
  if (slash != std::string::npos) where = where.substr(slash + 1);
  throw_error(status == cudaErrorMemoryAllocation ? ErrorKind::kResource : ErrorKind::kDevice,
              std::string("CUDA: ") + call + " failed: " + cudaGetErrorName(status) + " (" +
                  cudaGetErrorString(status) + ") at " + where + ":" + std::to_string(line));
}

}  // namespace pdvm::cuda

// Every CUDA runtime call and every launch goes through these: a failure becomes
// pdvm::Error(kDevice) naming the call and the CUDA error string.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "pdvm/error.h"

namespace pdvm::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line);

}  // namespace pdvm::cuda

#define PDVM_CUDA_CHECK(call)                                                               \
  do {                                                                                      \
    cudaError_t pdvm_status_ = (call);                                                      \
    if (pdvm_status_ != cudaSuccess)                                                        \
      ::pdvm::cuda::throw_cuda_error(pdvm_status_, #call, __FILE__, __LINE__);              \
  } while (0)

// After a kernel launch: catches bad launch configurations immediately.
#define PDVM_CUDA_CHECK_LAUNCH(kernel_name)                                                 \
  do {                                                                                      \
    cudaError_t pdvm_status_ = cudaGetLastError();                                          \
    if (pdvm_status_ != cudaSuccess)                                                        \
      ::pdvm::cuda::throw_cuda_error(pdvm_status_, "launch " kernel_name, __FILE__, __LINE__); \
  } while (0)

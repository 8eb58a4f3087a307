// Per-backend CUDA state: device, stream, cuBLAS handle, growable scratch buffers and the
// recorded graphs. Everything the kernels need beyond their arguments lives here, so two
// backends (e.g. on two devices) never share anything.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda/check.cuh"

namespace pdvm::cuda {

[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line);

#define PDVM_CUBLAS_CHECK(call)                                                        \
  do {                                                                                 \
    cublasStatus_t pdvm_cublas_status_ = (call);                                       \
    if (pdvm_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                  \
      ::pdvm::cuda::throw_cublas_error(pdvm_cublas_status_, #call, __FILE__, __LINE__); \
  } while (0)

// Device memory with a shared owner (so Tensors can hold it).
std::shared_ptr<void> device_alloc(uint64_t n_bytes, const char* what);

// A device buffer that only grows. Buffers it outgrows are kept until the context dies,
// because a recorded graph may still point at them.
class ScratchBuffer {
 public:
  // Growing inside a stream capture is a bug (it would allocate): checked.
  void* get(uint64_t n_bytes, const char* what, bool capturing);

 private:
  std::shared_ptr<void> current_;
  uint64_t capacity_ = 0;
  std::vector<std::shared_ptr<void>> retired_;
};

struct CudaContext {
  explicit CudaContext(int device);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device = 0;
  int sm_count = 0;
  int max_smem_per_block = 0;  // opt-in limit
  std::string device_name;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  bool capturing = false;  // inside run_recorded's stream capture: no allocation allowed
  // Programmatic dependent launch between our kernels (PDVM_CUDA_PDL=0 turns it off).
  bool programmatic_launch = true;

  ScratchBuffer attention_partials;
  ScratchBuffer gemm_weights;     // dequantized F16 weights for prefill GEMMs
  ScratchBuffer gemm_activations; // F16 copy of the GEMM input
  ScratchBuffer matvec_x8;        // int8 copy of a matvec input (Q8_0, Q4_0 weights)
  // Zeroed counters for kernels whose last block to arrive finishes the work; each kernel
  // resets what it used before it ends. Entry 0: streaming_norm_matvec.
  static constexpr int kGridArrivals = 1;
  std::shared_ptr<void> grid_arrivals;

  // Kernels run so far: eager launch() calls plus the kernel nodes of every graph replay
  // (cuBLAS calls outside a graph are not seen). Counted for launches-per-token figures.
  mutable uint64_t kernel_launches = 0;

  struct Recording {
    int calls = 0;
    cudaGraphExec_t exec = nullptr;
    int kernel_nodes = 0;
  };
  std::unordered_map<std::string, Recording> recordings;
};

}  // namespace pdvm::cuda

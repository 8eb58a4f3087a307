#include "cuda/context.cuh"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace pdvm::cuda {

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  std::string where = std::string(file);
  auto slash = where.find_last_of('/');
  if (slash != std::string::npos) where = where.substr(slash + 1);
  throw_error(status == CUBLAS_STATUS_ALLOC_FAILED ? ErrorKind::kResource : ErrorKind::kDevice,
              std::string("cuBLAS: ") + call + " failed: " + cublasGetStatusString(status) + " at " +
                  where + ":" + std::to_string(line));
}

std::shared_ptr<void> device_alloc(uint64_t n_bytes, const char* what) {
  void* ptr = nullptr;
  const cudaError_t status = cudaMalloc(&ptr, n_bytes == 0 ? 1 : n_bytes);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // clear the sticky-free allocation error
    size_t free_bytes = 0, total_bytes = 0;
    PDVM_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    constexpr double kMiB = 1024.0 * 1024.0;
    throw_error(ErrorKind::kResource,
                "cuda: out of GPU memory allocating " + std::to_string(static_cast<int64_t>(n_bytes / kMiB)) +
                    " MiB for " + what + "; the device has " +
                    std::to_string(static_cast<int64_t>(free_bytes / kMiB)) + " MiB free of " +
                    std::to_string(static_cast<int64_t>(total_bytes / kMiB)) + " MiB");
  }
  PDVM_CUDA_CHECK(status);
  return std::shared_ptr<void>(ptr, [](void* p) { cudaFree(p); });
}

void* ScratchBuffer::get(uint64_t n_bytes, const char* what, bool capturing) {
  if (n_bytes > capacity_) {
    PDVM_CHECK_MSG(!capturing, std::string("scratch for ") + what + " must not grow while recording");
    if (current_) retired_.push_back(std::move(current_));
    // Grow geometrically so a sequence of slightly larger requests allocates rarely.
    const uint64_t grown = std::max<uint64_t>(n_bytes, capacity_ + capacity_ / 2);
    current_ = device_alloc(grown, what);
    capacity_ = grown;
  }
  return current_.get();
}

CudaContext::CudaContext(int device_ordinal) : device(device_ordinal) {
  int n_devices = 0;
  const cudaError_t status = cudaGetDeviceCount(&n_devices);
  if (status != cudaSuccess || n_devices == 0) {
    (void)cudaGetLastError();
    throw_error(ErrorKind::kDevice, std::string("cuda: no CUDA device available (") +
                                        (status == cudaSuccess ? "0 devices" : cudaGetErrorString(status)) + ")");
  }
  if (device < 0 || device >= n_devices)
    throw_error(ErrorKind::kInvalidArgument, "cuda: device " + std::to_string(device) + " does not exist (" +
                                                 std::to_string(n_devices) + " present)");
  PDVM_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp props{};
  PDVM_CUDA_CHECK(cudaGetDeviceProperties(&props, device));
  sm_count = props.multiProcessorCount;
  max_smem_per_block = static_cast<int>(props.sharedMemPerBlockOptin);
  device_name = props.name;
  PDVM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  if (const char* env = std::getenv("PDVM_CUDA_PDL")) programmatic_launch = std::string(env) != "0";
  PDVM_CUBLAS_CHECK(cublasCreate(&cublas));
  PDVM_CUBLAS_CHECK(cublasSetStream(cublas, stream));
  grid_arrivals = device_alloc(kGridArrivals * sizeof(unsigned), "grid arrival counters");
  PDVM_CUDA_CHECK(cudaMemsetAsync(grid_arrivals.get(), 0, kGridArrivals * sizeof(unsigned), stream));
  PDVM_CUDA_CHECK(cudaStreamSynchronize(stream));
}

CudaContext::~CudaContext() {
  // Destructors must not throw: errors here are ignored on purpose.
  cudaSetDevice(device);
  if (stream) cudaStreamSynchronize(stream);
  for (auto& [key, recording] : recordings)
    if (recording.exec) cudaGraphExecDestroy(recording.exec);
  if (cublas) cublasDestroy(cublas);
  if (stream) cudaStreamDestroy(stream);
}

}  // namespace pdvm::cuda

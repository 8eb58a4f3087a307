// The read-bandwidth probe: a grid-stride reduction over a large buffer with 16-byte loads.
#include <algorithm>
#include <vector>

#include "cuda/context.cuh"
#include "pdvm/cuda_backend.h"

namespace pdvm {
namespace {

__global__ void read_reduce_kernel(const uint4* __restrict__ data, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  // The sink write keeps the loads alive; it is almost never taken.
  if (acc == 0x9e3779b9u) *sink = acc;
}

__global__ void fill_kernel(uint4* data, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    data[i] = make_uint4(static_cast<uint32_t>(i), static_cast<uint32_t>(i * 7), 0x1234567u, static_cast<uint32_t>(i >> 3));
}

}  // namespace

ReadBandwidth measure_cuda_read_bandwidth(int device, uint64_t bytes, int repeats) {
  cuda::CudaContext ctx(device);
  const int64_t n = static_cast<int64_t>(bytes / sizeof(uint4));
  auto buffer = cuda::device_alloc(static_cast<uint64_t>(n) * sizeof(uint4), "the bandwidth probe");
  auto sink = cuda::device_alloc(sizeof(uint32_t), "the bandwidth probe");
  auto* data = static_cast<uint4*>(buffer.get());
  const int grid = ctx.sm_count * 8;
  fill_kernel<<<grid, 256, 0, ctx.stream>>>(data, n);
  PDVM_CUDA_CHECK_LAUNCH("fill_kernel");
  cudaEvent_t start, stop;
  PDVM_CUDA_CHECK(cudaEventCreate(&start));
  PDVM_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  repeats = std::max(repeats, 1);
  for (int r = 0; r < repeats + 1; ++r) {  // the first pass warms up
    PDVM_CUDA_CHECK(cudaEventRecord(start, ctx.stream));
    read_reduce_kernel<<<grid, 256, 0, ctx.stream>>>(data, n, static_cast<uint32_t*>(sink.get()));
    PDVM_CUDA_CHECK_LAUNCH("read_reduce_kernel");
    PDVM_CUDA_CHECK(cudaEventRecord(stop, ctx.stream));
    PDVM_CUDA_CHECK(cudaEventSynchronize(stop));
    float elapsed = 0.0f;
    PDVM_CUDA_CHECK(cudaEventElapsedTime(&elapsed, start, stop));
    if (r > 0) ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  ReadBandwidth result;
  result.device_name = ctx.device_name;
  result.bytes = static_cast<uint64_t>(n) * sizeof(uint4);
  result.seconds = ms[ms.size() / 2] / 1e3;
  result.gb_per_s = static_cast<double>(result.bytes) / result.seconds / 1e9;
  return result;
}

}  // namespace pdvm

// Random weights generated on the device, directly in the PDVM kernel layouts, and a read
// bandwidth probe: benchmarks of 1B..13B shapes without moving files to the GPU machine.
#include <algorithm>
#include <vector>

#include "cuda/check.cuh"
#include "cuda/pdvm_kernel.cuh"
#include "pdvm/pdvm_fused.h"

namespace pdvm::fused {
namespace {

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [-1, 1).
__device__ __forceinline__ float uniform_pm1(uint64_t seed, uint64_t index) {
  return static_cast<float>(mix64(seed ^ mix64(index)) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

// Entry i (16 bits) of a random scale stream for m's format.
__device__ __forceinline__ uint16_t random_scale_entry(const DevMatrix& m, uint64_t seed, float amplitude, int64_t i) {
  if (m.format == kFmtQ4_K || m.format == kFmtQ5_K) {
    // Super-block records: scales 32..63 with mins equal to them and dmin = centre d, so a weight
    // is d * scale * (q - centre), centred as Q4_0's (Q4_K: 8, Q5_K: 16); Q5_K's fifth-bit words
    // random.
    const bool q5 = m.format == kFmtQ5_K;
    const int record = q5 ? kQ5KRecordHalves : kQ4KRecordHalves;
    const float centre = q5 ? 16.0f : 8.0f;
    const int64_t row = i / m.scale_stride, in_row = i % m.scale_stride;
    const int64_t super = row * m.scale_stride + in_row / record;  // one draw per record
    const int j = static_cast<int>(in_row % record);
    const uint64_t r = mix64(seed ^ mix64(static_cast<uint64_t>(i)));
    const float d = amplitude / (centre * 63.0f) * (0.5f + 0.5f * (uniform_pm1(seed ^ 0x5ca1e, super) + 1.0f));
    if (j < 8) {
      const int scale = 32 + static_cast<int>(r % 32);
      return static_cast<uint16_t>(scale | (scale << 8));
    }
    if (j < kQ4KRecordHalves) return __half_as_ushort(__float2half_rn(j == 8 ? d : -centre * d));
    return static_cast<uint16_t>(r);
  }
  if (m.format == kFmtQ6_K) {
    // Super-block records: int8 scales 64..127 and d so that a weight stays near `amplitude`.
    const int j = static_cast<int>(i % m.scale_stride % kQ6KRecordHalves);
    const uint64_t r = mix64(seed ^ mix64(static_cast<uint64_t>(i)));
    const float d = amplitude / (127.0f * 96.0f) * (0.5f + 0.5f * (uniform_pm1(seed ^ 0x5ca1e, i) + 1.0f));
    return j < 8   ? static_cast<uint16_t>((64 + r % 64) | ((64 + (r >> 8) % 64) << 8))
           : j == 8 ? __half_as_ushort(__float2half_rn(d))
                    : 0;
  }
  // f16 block scales; Q4_1 (scale, min) pairs: mins near -8 scales keep the weights centred.
  const float max_quant = m.format == kFmtQ8_0 ? 127.0f : 8.0f;
  const float u = 0.5f * (uniform_pm1(seed ^ 0x5ca1e, i) + 1.0f);
  const bool is_min = m.format == kFmtQ4_1 && (i & 1);
  const float value = (is_min ? -amplitude : amplitude) * (0.5f + u) / (is_min ? 1.0f : max_quant);
  return __half_as_ushort(__float2half_rn(value));
}

__global__ void fill_matrix_kernel(DevMatrix m, uint64_t seed, float amplitude) {
  const int64_t n_bytes = static_cast<int64_t>(m.rows) * m.row_bytes;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  uint8_t* data = const_cast<uint8_t*>(m.data);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_bytes / 2; i += stride) {
    const uint64_t r = mix64(seed ^ mix64(static_cast<uint64_t>(i)));
    uint16_t value;
    if (m.format == kFmtF16) {
      value = __half_as_ushort(__float2half_rn(amplitude * uniform_pm1(seed, i)));
    } else if (m.format == kFmtBF16) {
      value = __bfloat16_as_ushort(__float2bfloat16_rn(amplitude * uniform_pm1(seed, i)));
    } else if (m.format == kFmtQ8_0 || m.format == kFmtQ6_K) {
      const int8_t lo = static_cast<int8_t>(static_cast<int>(r % 255) - 127);
      const int8_t hi = static_cast<int8_t>(static_cast<int>((r >> 16) % 255) - 127);
      value = static_cast<uint16_t>(static_cast<uint8_t>(lo) | (static_cast<uint8_t>(hi) << 8));
    } else {
      value = static_cast<uint16_t>(r);
    }
    reinterpret_cast<uint16_t*>(data)[i] = value;
  }
  if (m.side) {
    // UPG side records: random tables and block scales (random signs), row scale so that
    // |w| stays below `amplitude`, no outliers.
    const int blocks = m.cols / (32 << m.block_shift);
    for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < m.rows; row += stride) {
      uint8_t* side = const_cast<uint8_t*>(m.side) + row * m.side_stride;
      for (int i = 0; i < 16; ++i) side[i] = static_cast<uint8_t>(static_cast<int8_t>(127.0f * uniform_pm1(seed ^ 0x7ab1e, row * 16 + i)));
      *reinterpret_cast<float*>(side + kUpgRowScale) = amplitude / (127.0f * 127.0f);
      *reinterpret_cast<int2*>(side + kUpgOutlierRange) = make_int2(0, 0);
      for (int b = 0; b < blocks; ++b) {
        const float u = uniform_pm1(seed ^ 0xb5ca1e, row * blocks + b);
        side[kUpgBlockScales + b] = static_cast<uint8_t>(static_cast<int8_t>(u < 0 ? -64.0f + 63.0f * u : 64.0f + 63.0f * u));
      }
    }
  }
  if (m.scales) {
    const int64_t n_scales = static_cast<int64_t>(m.rows) * m.scale_stride;
    uint16_t* entries = reinterpret_cast<uint16_t*>(const_cast<__half*>(m.scales));
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_scales; i += stride)
      entries[i] = random_scale_entry(m, seed, amplitude, i);
  }
}

__global__ void fill_floats_kernel(float* data, int64_t n, uint64_t seed, float center, float amplitude) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    data[i] = center + amplitude * uniform_pm1(seed, i);
}

__global__ void read_sum_kernel(const uint4* data, int64_t n, unsigned* sink) {
  unsigned acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const uint4 v = load_stream(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *sink = acc;  // keeps the loads alive
}

}  // namespace

void fill_random_matrix(DevMatrix& m, uint64_t seed, float amplitude, cudaStream_t stream) {
  fill_matrix_kernel<<<1024, 256, 0, stream>>>(m, seed, amplitude);
  PDVM_CUDA_CHECK_LAUNCH("fill_matrix_kernel");
}

void fill_random_floats(float* data, int64_t n, uint64_t seed, float center, float amplitude, cudaStream_t stream) {
  fill_floats_kernel<<<256, 256, 0, stream>>>(data, n, seed, center, amplitude);
  PDVM_CUDA_CHECK_LAUNCH("fill_floats_kernel");
}

double measure_read_bandwidth(const void* data, size_t bytes, int runs, cudaStream_t stream) {
  int sms = 0, device = 0;
  PDVM_CUDA_CHECK(cudaGetDevice(&device));
  PDVM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  unsigned* sink = nullptr;
  PDVM_CUDA_CHECK(cudaMalloc(&sink, sizeof(unsigned)));
  cudaEvent_t start, stop;
  PDVM_CUDA_CHECK(cudaEventCreate(&start));
  PDVM_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> gbps;
  const auto* vectors = static_cast<const uint4*>(data);
  const int64_t n = static_cast<int64_t>(bytes / sizeof(uint4));
  for (int run = 0; run < runs + 1; ++run) {
    PDVM_CUDA_CHECK(cudaEventRecord(start, stream));
    read_sum_kernel<<<sms * 4, 512, 0, stream>>>(vectors, n, sink);
    PDVM_CUDA_CHECK_LAUNCH("read_sum_kernel");
    PDVM_CUDA_CHECK(cudaEventRecord(stop, stream));
    PDVM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    PDVM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (run > 0) gbps.push_back(static_cast<double>(n) * sizeof(uint4) / (ms * 1e6));
  }
  PDVM_CUDA_CHECK(cudaEventDestroy(start));
  PDVM_CUDA_CHECK(cudaEventDestroy(stop));
  PDVM_CUDA_CHECK(cudaFree(sink));
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

}  // namespace pdvm::fused

namespace pdvm {

double measure_read_bandwidth_gbps(uint64_t bytes) {
  bytes -= bytes % 16;
  void* buffer = nullptr;
  PDVM_CUDA_CHECK(cudaMalloc(&buffer, bytes));
  PDVM_CUDA_CHECK(cudaMemset(buffer, 0x5a, bytes));
  const double gbps = fused::measure_read_bandwidth(buffer, bytes, 9, nullptr);
  PDVM_CUDA_CHECK(cudaFree(buffer));
  return gbps;
}

}  // namespace pdvm

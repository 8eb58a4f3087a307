// Helpers for the CUDA backend tests: a backend per test (skipped without a device unless
// PDVM_REQUIRE_GPU is set), host<->device tensors, random weights of any type and the
// reference dequantization of them.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "pdvm/cuda_backend.h"
#include "pdvm/tensor_type.h"
#include "test_support.h"

namespace pdvm::test {

inline std::unique_ptr<Backend> cuda_backend_or_skip() {
  if (cuda_device_count() == 0) {
    if (std::getenv("PDVM_REQUIRE_GPU")) ADD_FAILURE() << "no CUDA device but PDVM_REQUIRE_GPU is set";
    return nullptr;
  }
  return make_cuda_backend(0);
}

// scripts/compute-sanitizer.sh sets PDVM_UNDER_COMPUTE_SANITIZER: the tool slows every device access
// and allocates device memory of its own, so bandwidth and free-memory bounds say nothing there.
inline bool under_compute_sanitizer() { return std::getenv("PDVM_UNDER_COMPUTE_SANITIZER") != nullptr; }

#define PDVM_CUDA_BACKEND_OR_SKIP(var)                   \
  auto var = ::pdvm::test::cuda_backend_or_skip();       \
  if (!var) GTEST_SKIP() << "no CUDA device";

inline Tensor upload_f32(Backend& backend, const std::vector<float>& values, std::array<int64_t, 4> ne) {
  Tensor t = backend.alloc(TensorType::kF32, ne);
  backend.write(t, values.data(), values.size() * sizeof(float));
  return t;
}

inline Tensor upload_i32(Backend& backend, const std::vector<int32_t>& values) {
  Tensor t = backend.alloc(TensorType::kI32, {static_cast<int64_t>(values.size()), 1, 1, 1});
  backend.write(t, values.data(), values.size() * sizeof(int32_t));
  return t;
}

template <typename T>
std::vector<T> download(Backend& backend, const Tensor& t) {
  std::vector<T> out(t.n_bytes / sizeof(T));
  backend.read(t, out.data(), t.n_bytes);
  return out;
}

// Poisons an output so unwritten elements show up as NaN.
inline Tensor alloc_poisoned(Backend& backend, TensorType type, std::array<int64_t, 4> ne) {
  Tensor t = backend.alloc(type, ne);
  std::vector<uint8_t> nan_bytes(t.n_bytes, 0xff);
  backend.write(t, nan_bytes.data(), nan_bytes.size());
  return t;
}

// Decode matvecs of Q8_0 and Q4_0 weights multiply an int8 copy of x (per 32-block, d =
// max |x| / 127, x * (1 / d) rounded to nearest even): x as the device rounds it, so the kernel's
// arithmetic is still checked to float accuracy. The rounding itself moves a product by up to
// d / 2 per element (~0.4 % of the block's largest |x|), as llama.cpp's quantized matvec does.
inline bool int8_activations(TensorType type, int n_tokens) {
  return n_tokens <= 8 && (type == TensorType::kQ8_0 || type == TensorType::kQ4_0);
}

inline std::vector<float> int8_rounded(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0.0f;
    for (size_t i = b; i < b + 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    for (size_t i = b; i < b + 32; ++i) out[i] = static_cast<float>(std::nearbyint(x[i] * id)) * d;
  }
  return out;
}

inline uint16_t random_scale_f16(float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  return fp32_to_fp16(dist(rng()));
}

// Random GGUF bytes for n_rows rows of k elements: quantized random floats where a reference
// quantizer exists, otherwise random blocks with small finite scales.
inline std::vector<uint8_t> random_weight_bytes(TensorType type, int64_t k, int64_t n_rows) {
  const int64_t row_bytes = type_bytes(type, k);
  std::vector<uint8_t> bytes(static_cast<size_t>(row_bytes * n_rows));
  if (type_info(type).quantizable) {
    for (int64_t r = 0; r < n_rows; ++r) {
      const std::vector<float> row = random_floats(static_cast<size_t>(k), 0.5f);
      quantize_row(type, row.data(), bytes.data() + r * row_bytes, k);
    }
    return bytes;
  }
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng()));
  const int64_t block_bytes = type_info(type).block_bytes;
  for (size_t off = 0; off < bytes.size(); off += static_cast<size_t>(block_bytes)) {
    uint8_t* block = bytes.data() + off;
    if (type == TensorType::kQ4_K) {
      const uint16_t d = random_scale_f16(0.001f, 0.01f), dmin = random_scale_f16(0.001f, 0.01f);
      std::memcpy(block, &d, 2);
      std::memcpy(block + 2, &dmin, 2);
    } else if (type == TensorType::kQ6_K) {
      const uint16_t d = random_scale_f16(0.0005f, 0.005f);
      std::memcpy(block + 208, &d, 2);
    } else {
      ADD_FAILURE() << "no random block recipe for " << type_name(type);
    }
  }
  return bytes;
}

inline std::vector<float> dequantize_rows(TensorType type, const std::vector<uint8_t>& bytes, int64_t k,
                                          int64_t n_rows) {
  std::vector<float> out(static_cast<size_t>(k * n_rows));
  const int64_t row_bytes = type_bytes(type, k);
  for (int64_t r = 0; r < n_rows; ++r) dequantize_row(type, bytes.data() + r * row_bytes, out.data() + r * k, k);
  return out;
}

}  // namespace pdvm::test

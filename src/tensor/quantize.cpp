// Reference round-to-nearest quantization, following GGML's reference quantizers operation by
// operation (float32 arithmetic in the same order, no fused multiply-add: the library is built
// in ISO C++ mode, where GCC does not contract), so the bytes match GGML and the gguf package.
#include <cmath>

#include "pdvm/error.h"
#include "tensor/reference_blocks.h"

namespace pdvm::reference {

namespace {

// The element of largest magnitude, with its sign (the first one on ties).
float signed_absmax(const float* x, int64_t n) {
  float amax = 0.0f, max = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void min_max(const float* x, int64_t n, float& min, float& max) {
  min = x[0];
  max = x[0];
  for (int64_t j = 1; j < n; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
}

float inverse_or_zero(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

// Symmetric 4/5-bit: the extreme value maps to -2^(bits-1); quants are stored with that offset
// added, truncating x/d + offset + 0.5 (always positive, so truncation rounds to nearest).
int symmetric_quant(float x, float id, float offset_plus_half, int max_quant) {
  const int q = static_cast<int>(x * id + offset_plus_half);
  return q < max_quant ? q : max_quant;
}

void quantize_q4_0(const float* x, uint8_t* block) {
  const float d = signed_absmax(x, kQK) / -8.0f;
  const float id = inverse_or_zero(d);
  store_f16(block, d);
  for (int j = 0; j < 16; ++j) {
    const int q0 = symmetric_quant(x[j], id, 8.5f, 15);
    const int q1 = symmetric_quant(x[j + 16], id, 8.5f, 15);
    block[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

void quantize_q5_0(const float* x, uint8_t* block) {
  const float d = signed_absmax(x, kQK) / -16.0f;
  const float id = inverse_or_zero(d);
  store_f16(block, d);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int q0 = symmetric_quant(x[j], id, 16.5f, 31);
    const int q1 = symmetric_quant(x[j + 16], id, 16.5f, 31);
    block[6 + j] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
    qh |= static_cast<uint32_t>(q0 >> 4) << j;
    qh |= static_cast<uint32_t>(q1 >> 4) << (j + 16);
  }
  for (int i = 0; i < 4; ++i) block[2 + i] = static_cast<uint8_t>(qh >> (8 * i));
}

// Asymmetric: d spans [min, max] in 2^bits - 1 steps, stored with the min.
int asymmetric_quant(float x, float min, float id, int max_quant) {
  const int q = static_cast<int>((x - min) * id + 0.5f);
  return q < max_quant ? q : max_quant;
}

void quantize_q4_1(const float* x, uint8_t* block) {
  float min, max;
  min_max(x, kQK, min, max);
  const float d = (max - min) / 15.0f;
  const float id = inverse_or_zero(d);
  store_f16(block, d);
  store_f16(block + 2, min);
  for (int j = 0; j < 16; ++j) {
    const int q0 = asymmetric_quant(x[j], min, id, 15);
    const int q1 = asymmetric_quant(x[j + 16], min, id, 15);
    block[4 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

void quantize_q5_1(const float* x, uint8_t* block) {
  float min, max;
  min_max(x, kQK, min, max);
  const float d = (max - min) / 31.0f;
  const float id = inverse_or_zero(d);
  store_f16(block, d);
  store_f16(block + 2, min);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int q0 = asymmetric_quant(x[j], min, id, 31);
    const int q1 = asymmetric_quant(x[j + 16], min, id, 31);
    block[8 + j] = static_cast<uint8_t>((q0 & 0x0f) | ((q1 & 0x0f) << 4));
    qh |= static_cast<uint32_t>(q0 >> 4) << j;
    qh |= static_cast<uint32_t>(q1 >> 4) << (j + 16);
  }
  for (int i = 0; i < 4; ++i) block[4 + i] = static_cast<uint8_t>(qh >> (8 * i));
}

// Q8_0/Q8_1: d = absmax / 127, quants rounded half away from zero. Returns the quant sum.
int quantize_int8(const float* x, uint8_t* qs, float& d) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  d = amax / 127.0f;
  const float id = inverse_or_zero(d);
  int sum = 0;
  for (int j = 0; j < kQK; ++j) {
    const auto q = static_cast<int8_t>(std::round(x[j] * id));
    qs[j] = static_cast<uint8_t>(q);
    sum += q;
  }
  return sum;
}

void quantize_q8_0(const float* x, uint8_t* block) {
  float d;
  quantize_int8(x, block + 2, d);
  store_f16(block, d);
}

void quantize_q8_1(const float* x, uint8_t* block) {
  float d;
  const int sum = quantize_int8(x, block + 4, d);
  store_f16(block, d);
  store_f16(block + 2, static_cast<float>(sum) * d);
}

template <typename BlockFn>
void for_each_block(BlockFn fn, const float* src, uint8_t* dst, int64_t n_blocks, int64_t block_bytes,
                    int64_t block_elems = kQK) {
  for (int64_t b = 0; b < n_blocks; ++b) fn(src + b * block_elems, dst + b * block_bytes);
}

}  // namespace

void quantize_blocks(TensorType type, const float* src, uint8_t* dst, int64_t n) {
  switch (type) {
    case TensorType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case TensorType::kF16:
      for (int64_t i = 0; i < n; ++i) store_f16(dst + 2 * i, src[i]);
      return;
    case TensorType::kBF16:
      for (int64_t i = 0; i < n; ++i) store_u16(dst + 2 * i, fp32_to_bf16(src[i]));
      return;
    case TensorType::kQ4_0: return for_each_block(quantize_q4_0, src, dst, n, 18);
    case TensorType::kQ4_1: return for_each_block(quantize_q4_1, src, dst, n, 20);
    case TensorType::kQ5_0: return for_each_block(quantize_q5_0, src, dst, n, 22);
    case TensorType::kQ5_1: return for_each_block(quantize_q5_1, src, dst, n, 24);
    case TensorType::kQ8_0: return for_each_block(quantize_q8_0, src, dst, n, 34);
    case TensorType::kQ8_1: return for_each_block(quantize_q8_1, src, dst, n, 36);
    case TensorType::kQ4_K: return for_each_block(quantize_q4_k, src, dst, n, 144, kQKK);
    case TensorType::kQ5_K: return for_each_block(quantize_q5_k, src, dst, n, 176, kQKK);
    case TensorType::kQ6_K: return for_each_block(quantize_q6_k, src, dst, n, 210, kQKK);
    default: break;
  }
  PDVM_CHECK_MSG(false, "quantize_blocks: no reference quantizer for " + std::string(type_name(type)));
}

}  // namespace pdvm::reference

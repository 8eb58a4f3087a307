// Scalar reference conversions of whole blocks, one function pair per family of layouts.
// Byte layouts follow GGML's block structs exactly (little-endian, no padding).
#pragma once

#include <cstdint>
#include <cstring>

#include "pdvm/tensor_type.h"

namespace pdvm::reference {

inline constexpr int64_t kQK = 32;    // elements per block of the 32-element families
inline constexpr int64_t kQKK = 256;  // elements per K-quant super-block

inline uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
inline float load_f16(const uint8_t* p) { return fp16_to_fp32(load_u16(p)); }
inline float load_f32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, sizeof f);
  return f;
}
inline void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline void store_f16(uint8_t* p, float f) { store_u16(p, fp32_to_fp16(f)); }

// n_blocks whole blocks of `type`; the caller has checked the type is known (and quantizable).
void dequantize_blocks(TensorType type, const uint8_t* src, float* dst, int64_t n_blocks);
void quantize_blocks(TensorType type, const float* src, uint8_t* dst, int64_t n_blocks);

// One K-quant super-block of kQKK elements.
void quantize_q4_k(const float* x, uint8_t* block);
void quantize_q6_k(const float* x, uint8_t* block);

}  // namespace pdvm::reference

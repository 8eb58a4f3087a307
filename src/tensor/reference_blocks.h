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

// Q4_K/Q5_K pack eight 6-bit scales and eight 6-bit mins into 12 bytes: sub-blocks 0..3 use the
// low 6 bits of bytes 0..3 (scale) and 4..7 (min); sub-blocks 4..7 take their low 4 bits from
// the nibbles of bytes 8..11 and their top 2 bits from the top bits of bytes 0..7.
inline void k4_scale_min(const uint8_t* q, int j, int& scale, int& min) {
  if (j < 4) {
    scale = q[j] & 63;
    min = q[j + 4] & 63;
  } else {
    scale = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// n_blocks whole blocks of `type`; the caller has checked the type is known (and quantizable).
void dequantize_blocks(TensorType type, const uint8_t* src, float* dst, int64_t n_blocks);
void quantize_blocks(TensorType type, const float* src, uint8_t* dst, int64_t n_blocks);

// One K-quant super-block of kQKK elements.
void quantize_q4_k(const float* x, uint8_t* block);
void quantize_q5_k(const float* x, uint8_t* block);
void quantize_q6_k(const float* x, uint8_t* block);

}  // namespace pdvm::reference

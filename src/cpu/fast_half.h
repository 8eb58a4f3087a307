// Inline scalar half-precision conversion for the hot loops of the fast CPU backend (the
// library's fp16_to_fp32 is an out-of-line reference; block scales are converted millions
// of times per token).
#pragma once

#include <cstdint>
#include <cstring>

namespace pdvm::cpu {

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;
  uint32_t bits;
  if (magnitude >= 0x7c00u) {
    bits = sign | 0x7f800000u | ((magnitude & 0x3ffu) << 13);  // inf / nan
  } else {
    // Placing exponent+mantissa 13 bits up and multiplying by 2^112 rebiases the exponent
    // and normalizes subnormals in one float multiply.
    uint32_t shifted = magnitude << 13;
    float f;
    std::memcpy(&f, &shifted, sizeof(f));
    f *= 0x1p112f;
    std::memcpy(&bits, &f, sizeof(bits));
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

inline float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return half_bits_to_float(h);
}

}  // namespace pdvm::cpu

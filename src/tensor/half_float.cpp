// IEEE binary16 and bfloat16 conversions, done on the bit patterns so the result does not
// depend on the host's floating-point environment or on F16C being available.
#include <bit>
#include <cstdint>

#include "pdvm/tensor_type.h"

namespace pdvm {

namespace {

constexpr uint32_t kF32SignMask = 0x80000000u;
constexpr uint32_t kF32AbsMask = 0x7fffffffu;
constexpr uint32_t kF32Inf = 0x7f800000u;
// Smallest |x| that rounds to fp16 infinity: halfway between 65504 and 65536 (ties go to the
// even neighbour, which is infinity).
constexpr uint32_t kF16OverflowThreshold = 0x477ff000u;
constexpr uint32_t kF16MinNormalAsF32 = 0x38800000u;  // 2^-14
// fp32 exponent bias minus fp16 exponent bias (127 - 15), in fp32 exponent position.
constexpr uint32_t kRebias = 112u << 23;

}  // namespace

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | kF32Inf | (mantissa << 13);  // inf, or nan with its payload kept
  } else if (exponent != 0) {
    bits = sign | ((exponent << 23) + kRebias) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    // Subnormal: normalise so the leading one becomes the implicit bit.
    uint32_t f32_exponent = 113;  // exponent of 2^-14 in fp32
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --f32_exponent;
    }
    bits = sign | (f32_exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t fp32_to_fp16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((bits & kF32SignMask) >> 16);
  const uint32_t abs = bits & kF32AbsMask;
  if (abs > kF32Inf) {
    // NaN: quiet it and keep the top payload bits, as the hardware converters do.
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  if (abs >= kF16OverflowThreshold) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs >= kF16MinNormalAsF32) {
    // Normal: drop 13 mantissa bits rounding to nearest even; a carry correctly bumps the exponent.
    const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - kRebias) >> 13));
  }
  // Subnormal or zero: the result is round(|f| * 2^24), as an integer mantissa.
  const uint32_t exponent = abs >> 23;
  const uint32_t shift = 126 - exponent;  // |f| * 2^24 == mantissa_with_implicit_one >> shift
  if (shift > 24) return sign;            // below half the smallest subnormal
  const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t truncated = mantissa >> shift;
  const uint32_t remainder = mantissa & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  const bool round_up = remainder > half || (remainder == half && (truncated & 1u));
  return static_cast<uint16_t>(sign | (truncated + (round_up ? 1u : 0u)));
}

float bf16_to_fp32(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t fp32_to_bf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & kF32AbsMask) > kF32Inf) {
    return static_cast<uint16_t>((bits >> 16) | 0x40u);  // keep nan a (quiet) nan
  }
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace pdvm

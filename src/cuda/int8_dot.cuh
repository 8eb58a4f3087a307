// Integer dot products of one 16-byte weight chunk against int8 activations (dp4a; int16 ones
// as their high and low bytes), and the quantization of the activations, shared by the unfused
// kernels and the fused PDVM kernels: the sums are exact and every path quantizes by one rule,
// so all get the same integers.
#pragma once

#include <cstdint>

namespace pdvm::int8_dot {

__device__ __forceinline__ int dp4a(uint32_t a, int b, int c) { return __dp4a(static_cast<int>(a), b, c); }

// Weight bytes a times activation bytes b, plus c: nibbles (unsigned) or int8 quants (signed)
// against activations that are signed (int: int8 codes, or the high bytes of int16 ones) or
// unsigned (uint32_t: the low bytes of int16 ones).
__device__ __forceinline__ int dp4a_nibbles(uint32_t a, int b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
__device__ __forceinline__ int dp4a_nibbles(uint32_t a, uint32_t b, int c) {
  int d;
  asm("dp4a.u32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
__device__ __forceinline__ int dp4a_int8(uint32_t a, int b, int c) { return dp4a(a, b, c); }
__device__ __forceinline__ int dp4a_int8(uint32_t a, uint32_t b, int c) {
  int d;
  asm("dp4a.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// 16 int8 weights (Q8_0) times 16 activation bytes (Acts4: int4 signed, uint4 unsigned).
template <class Acts4>
__device__ __forceinline__ int q8_chunk_dot(uint4 w, Acts4 a) {
  int sum = dp4a_int8(w.x, a.x, 0);
  sum = dp4a_int8(w.y, a.y, sum);
  sum = dp4a_int8(w.z, a.z, sum);
  return dp4a_int8(w.w, a.w, sum);
}

// 32 unsigned nibbles (Q4_0/Q4_1: byte i holds element i in its low nibble and element i + 16 in
// its high one) times the activation bytes of those elements (lo: 0-15, hi: 16-31; Acts4 as
// above), without the Q4_0 offset of 8. The high nibbles are multiplied in place (16 x their
// value): one shift per chunk instead of one per word, and the integer sum is exact either way.
template <class Acts4>
__device__ __forceinline__ int q4_chunk_dot(uint4 w, Acts4 lo, Acts4 hi) {
  constexpr uint32_t kLow = 0x0f0f0f0fu, kHigh = 0xf0f0f0f0u;
  int sum = dp4a_nibbles(w.x & kLow, lo.x, 0);
  sum = dp4a_nibbles(w.y & kLow, lo.y, sum);
  sum = dp4a_nibbles(w.z & kLow, lo.z, sum);
  sum = dp4a_nibbles(w.w & kLow, lo.w, sum);
  int sum16 = dp4a_nibbles(w.x & kHigh, hi.x, 0);
  sum16 = dp4a_nibbles(w.y & kHigh, hi.y, sum16);
  sum16 = dp4a_nibbles(w.z & kHigh, hi.z, sum16);
  sum16 = dp4a_nibbles(w.w & kHigh, hi.w, sum16);
  return sum + (sum16 >> 4);
}

// 32 unsigned weight bytes (elements 4k..4k+3 in lo[k], 16 + 4k.. in hi[k]) times the activation
// bytes of those elements (Acts4 as above).
template <class Acts4>
__device__ __forceinline__ int u8_chunk_dot(const uint32_t (&lo)[4], const uint32_t (&hi)[4], Acts4 a_lo, Acts4 a_hi) {
  int sum = dp4a_nibbles(lo[0], a_lo.x, 0);
  sum = dp4a_nibbles(lo[1], a_lo.y, sum);
  sum = dp4a_nibbles(lo[2], a_lo.z, sum);
  sum = dp4a_nibbles(lo[3], a_lo.w, sum);
  sum = dp4a_nibbles(hi[0], a_hi.x, sum);
  sum = dp4a_nibbles(hi[1], a_hi.y, sum);
  sum = dp4a_nibbles(hi[2], a_hi.z, sum);
  return dp4a_nibbles(hi[3], a_hi.w, sum);
}

// The codes of one lane's values of a 32-value block, the block's scale d and its code sum.
template <int kLanes>
struct BlockCodes {
  int q[32 / kLanes];
  float d;
  int sum;
};

// Quantizes a 32-value block held by kLanes consecutive lanes (aligned to kLanes), 32 / kLanes
// values each: d = max |v| / kMaxCode, codes round(v / d), multiplied by the reciprocal (a division per
// value was half the quantization's instructions; its rounding stays far below the half step that
// would take a code past kMaxCode). Every lane of the warp calls it (shuffles); d and
// the code sum come back on every lane of the block. The lane layout cannot change the result.
template <int kLanes, int kMaxCode = 127>
__device__ __forceinline__ BlockCodes<kLanes> quantize_block(const float (&v)[32 / kLanes]) {
  constexpr int kValues = 32 / kLanes;
  float amax = fabsf(v[0]);
#pragma unroll
  for (int i = 1; i < kValues; ++i) amax = fmaxf(amax, fabsf(v[i]));
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  BlockCodes<kLanes> out;
  out.d = amax / static_cast<float>(kMaxCode);
  const float inverse = out.d > 0.0f ? 1.0f / out.d : 0.0f;
  out.sum = 0;
#pragma unroll
  for (int i = 0; i < kValues; ++i) {
    out.q[i] = __float2int_rn(v[i] * inverse);
    out.sum += out.q[i];
  }
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) out.sum += __shfl_xor_sync(0xffffffffu, out.sum, offset);
  return out;
}

}  // namespace pdvm::int8_dot

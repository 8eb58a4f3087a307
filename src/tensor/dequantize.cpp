// Reference dequantization: one scalar function per GGML block layout. Each multiplies in the
// same order as GGML's reference (scale first, then the quant), so results are bit-exact.
#include <bit>

#include "pdvm/error.h"
#include "tensor/reference_blocks.h"

namespace pdvm::reference {

namespace {

// Low nibbles of the 16 packed bytes are elements 0..15, high nibbles elements 16..31.
void dequantize_q4_0(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const uint8_t* qs = block + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void dequantize_q4_1(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const float m = load_f16(block + 2);
  const uint8_t* qs = block + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// Fifth bits: bit j of the 32-bit little-endian qh belongs to element j.
int fifth_bit(uint32_t qh, int element) { return static_cast<int>((qh >> element) & 1u) << 4; }

void dequantize_q5_0(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const uint32_t qh = load_u32(block + 2);
  const uint8_t* qs = block + 6;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(((qs[j] & 0x0f) | fifth_bit(qh, j)) - 16) * d;
    y[j + 16] = static_cast<float>(((qs[j] >> 4) | fifth_bit(qh, j + 16)) - 16) * d;
  }
}

void dequantize_q5_1(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const float m = load_f16(block + 2);
  const uint32_t qh = load_u32(block + 4);
  const uint8_t* qs = block + 8;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0f) | fifth_bit(qh, j)) * d + m;
    y[j + 16] = static_cast<float>((qs[j] >> 4) | fifth_bit(qh, j + 16)) * d + m;
  }
}

void dequantize_int8_quants(float d, const uint8_t* qs, int64_t n, float* y) {
  for (int64_t j = 0; j < n; ++j) y[j] = static_cast<float>(static_cast<int8_t>(qs[j])) * d;
}

// Q2_K: 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit quants, fp16 d,
// fp16 dmin. Each half of 128 elements reads 32 quant bytes four times at shifts 0,2,4,6;
// every 16 elements take the next scale byte.
void dequantize_q2_k(const uint8_t* block, float* y) {
  const uint8_t* scales = block;
  const uint8_t* qs = block + 16;
  const float d = load_f16(block + 80);
  const float dmin = load_f16(block + 82);
  for (int e = 0; e < kQKK; ++e) {
    const int half = e / 128, shift = 2 * ((e % 128) / 32), l = e % 32;
    const uint8_t sc = scales[e / 16];
    const float dl = d * static_cast<float>(sc & 0x0f);
    const float ml = dmin * static_cast<float>(sc >> 4);
    y[e] = dl * static_cast<float>((qs[half * 32 + l] >> shift) & 3) - ml;
  }
}

// Q3_K: 32 bytes hmask, 64 bytes 2-bit low quants, 12 bytes of sixteen 6-bit scales, fp16 d.
// Element e's high bit is bit (e / 32) of hmask[e % 32]; a clear bit subtracts 4.
int q3_k_scale(const uint8_t* scales, int i) {
  const int low = (scales[i % 8] >> (4 * (i / 8))) & 0x0f;
  const int high = (scales[8 + i % 4] >> (2 * (i / 4))) & 0x03;
  return (low | (high << 4)) - 32;
}

void dequantize_q3_k(const uint8_t* block, float* y) {
  const uint8_t* hmask = block;
  const uint8_t* qs = block + 32;
  const uint8_t* scales = block + 96;
  const float d = load_f16(block + 108);
  for (int e = 0; e < kQKK; ++e) {
    const int half = e / 128, shift = 2 * ((e % 128) / 32), l = e % 32;
    const float dl = d * static_cast<float>(q3_k_scale(scales, e / 16));
    const int low = (qs[half * 32 + l] >> shift) & 3;
    const int high_clear = ((hmask[l] >> (e / 32)) & 1) == 0;
    y[e] = dl * static_cast<float>(low - 4 * high_clear);
  }
}

// 4-bit quants: each 64 elements read 32 bytes, low nibbles first then high nibbles.
void dequantize_q4_k(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const float dmin = load_f16(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* qs = block + 16;
  for (int sub = 0; sub < 8; ++sub) {
    int scale, min;
    k4_scale_min(scales, sub, scale, min);
    const float ds = d * static_cast<float>(scale);
    const float dm = dmin * static_cast<float>(min);
    const uint8_t* q = qs + (sub / 2) * 32;
    const int shift = 4 * (sub % 2);
    for (int l = 0; l < 32; ++l) y[sub * 32 + l] = ds * static_cast<float>((q[l] >> shift) & 0x0f) - dm;
  }
}

// As Q4_K plus a fifth bit: bit `sub` of qh[l] for element sub * 32 + l.
void dequantize_q5_k(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const float dmin = load_f16(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* qh = block + 16;
  const uint8_t* qs = block + 48;
  for (int sub = 0; sub < 8; ++sub) {
    int scale, min;
    k4_scale_min(scales, sub, scale, min);
    const float ds = d * static_cast<float>(scale);
    const float dm = dmin * static_cast<float>(min);
    const uint8_t* q = qs + (sub / 2) * 32;
    const int shift = 4 * (sub % 2);
    for (int l = 0; l < 32; ++l) {
      const int value = ((q[l] >> shift) & 0x0f) | (((qh[l] >> sub) & 1) << 4);
      y[sub * 32 + l] = ds * static_cast<float>(value) - dm;
    }
  }
}

// Q6_K: 128 bytes low nibbles, 64 bytes 2-bit highs, 16 int8 scales, fp16 d. In each half of
// 128 elements, the 32-element groups g = 0..3 take low nibbles from ql[(g % 2) * 32 + l]
// (low nibble for g < 2, high for g >= 2) and high bits from qh[l] at shift 2g.
void dequantize_q6_k(const uint8_t* block, float* y) {
  const uint8_t* ql_all = block;
  const uint8_t* qh_all = block + 128;
  const uint8_t* scales = block + 192;
  const float d = load_f16(block + 208);
  for (int e = 0; e < kQKK; ++e) {
    const int half = e / 128, group = (e % 128) / 32, l = e % 32;
    const uint8_t* ql = ql_all + half * 64;
    const uint8_t* qh = qh_all + half * 32;
    const int low = (ql[(group % 2) * 32 + l] >> (4 * (group / 2))) & 0x0f;
    const int high = (qh[l] >> (2 * group)) & 3;
    const float ds = d * static_cast<float>(static_cast<int8_t>(scales[e / 16]));
    y[e] = ds * static_cast<float>((low | (high << 4)) - 32);
  }
}

template <typename Plain>
void dequantize_plain(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    Plain value;
    std::memcpy(&value, src + i * sizeof(Plain), sizeof(Plain));
    y[i] = static_cast<float>(value);
  }
}

template <typename BlockFn>
void for_each_block(BlockFn fn, const uint8_t* src, float* dst, int64_t n_blocks, int64_t block_bytes,
                    int64_t block_elems) {
  for (int64_t b = 0; b < n_blocks; ++b) fn(src + b * block_bytes, dst + b * block_elems);
}

}  // namespace

void dequantize_blocks(TensorType type, const uint8_t* src, float* dst, int64_t n) {
  switch (type) {
    case TensorType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case TensorType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = load_f16(src + 2 * i);
      return;
    case TensorType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(src + 2 * i));
      return;
    case TensorType::kQ4_0: return for_each_block(dequantize_q4_0, src, dst, n, 18, kQK);
    case TensorType::kQ4_1: return for_each_block(dequantize_q4_1, src, dst, n, 20, kQK);
    case TensorType::kQ5_0: return for_each_block(dequantize_q5_0, src, dst, n, 22, kQK);
    case TensorType::kQ5_1: return for_each_block(dequantize_q5_1, src, dst, n, 24, kQK);
    case TensorType::kQ8_0:
      for (int64_t b = 0; b < n; ++b) dequantize_int8_quants(load_f16(src + b * 34), src + b * 34 + 2, kQK, dst + b * kQK);
      return;
    case TensorType::kQ8_1:  // fp16 d, fp16 s (the precomputed sum, unused here), 32 int8
      for (int64_t b = 0; b < n; ++b) dequantize_int8_quants(load_f16(src + b * 36), src + b * 36 + 4, kQK, dst + b * kQK);
      return;
    case TensorType::kQ8_K:  // fp32 d, 256 int8, 16 int16 partial sums (unused here)
      for (int64_t b = 0; b < n; ++b) dequantize_int8_quants(load_f32(src + b * 292), src + b * 292 + 4, kQKK, dst + b * kQKK);
      return;
    case TensorType::kQ2_K: return for_each_block(dequantize_q2_k, src, dst, n, 84, kQKK);
    case TensorType::kQ3_K: return for_each_block(dequantize_q3_k, src, dst, n, 110, kQKK);
    case TensorType::kQ4_K: return for_each_block(dequantize_q4_k, src, dst, n, 144, kQKK);
    case TensorType::kQ5_K: return for_each_block(dequantize_q5_k, src, dst, n, 176, kQKK);
    case TensorType::kQ6_K: return for_each_block(dequantize_q6_k, src, dst, n, 210, kQKK);
    case TensorType::kI8: return dequantize_plain<int8_t>(src, dst, n);
    case TensorType::kI16: return dequantize_plain<int16_t>(src, dst, n);
    case TensorType::kI32: return dequantize_plain<int32_t>(src, dst, n);
    case TensorType::kI64: return dequantize_plain<int64_t>(src, dst, n);
    case TensorType::kF64: return dequantize_plain<double>(src, dst, n);
    case TensorType::kUpg3:  // UPG matrices have their own decompressor (pdvm/upg.h)
    case TensorType::kUpg4: break;
  }
  PDVM_CHECK_MSG(false, "dequantize_blocks: unhandled type " + std::to_string(static_cast<uint32_t>(type)));
}

}  // namespace pdvm::reference

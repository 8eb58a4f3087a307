#include "cuda/pdvm_repack.h"

#include <cstring>

#include "cuda/pdvm_device.cuh"
#include "pdvm/error.h"
#include "tensor/reference_blocks.h"

namespace pdvm::fused {
namespace {

constexpr int kSuperBlock = 256;

// Q8_0, Q4_0, Q4_1: split each block's f16 scale (and min) from its quants.
void split_simple_blocks(HostMatrix& out, const uint8_t* src, int64_t rows) {
  const int blocks = out.cols / kQuantBlock;
  const int halves = scale_halves(out.format);
  const int quant_bytes = out.format == kFmtQ8_0 ? 32 : 16;
  const int block_bytes = 2 * halves + quant_bytes;
  const int stride = scale_stride_of(out.format, out.cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int b = 0; b < blocks; ++b) {
      const uint8_t* block = src + (r * blocks + b) * block_bytes;
      for (int h = 0; h < halves; ++h) {
        uint16_t scale;
        std::memcpy(&scale, block + 2 * h, 2);
        out.scales.push_back(scale);
      }
      out.data.insert(out.data.end(), block + 2 * halves, block + block_bytes);
    }
    out.scales.resize(out.scales.size() + (stride - blocks * halves), 0);
  }
}

// Q4_K (and Q5_K) super-blocks -> nibbles in the Q4_0/Q4_1 byte layout, one 32-weight chunk per
// sub-block, and a scale record per super-block (kQ4KRecordHalves): the eight 6-bit (scale, min)
// pairs as bytes, d, and -dmin (d's and dmin's f16 bits as they are, dmin's sign flipped), so
// x = (d * scale) q + (-dmin * min) exactly. Q5_K's records (kQ5KRecordHalves) go on with each
// chunk's fifth bits as one 32-bit word in q5_k_fifth_bits' layout.
void repack_k4_family(HostMatrix& out, const uint8_t* src, int64_t rows, bool fifth_bit) {
  const int supers = out.cols / kSuperBlock;
  const int stride = scale_stride_of(out.format, out.cols);
  const int block_bytes = fifth_bit ? 176 : 144;
  for (int64_t r = 0; r < rows; ++r) {
    for (int s = 0; s < supers; ++s) {
      const uint8_t* block = src + (r * supers + s) * block_bytes;
      uint16_t d, dmin;
      std::memcpy(&d, block, 2);
      std::memcpy(&dmin, block + 2, 2);
      const uint8_t* qh = block + 16;
      const uint8_t* qs = block + (fifth_bit ? 48 : 16);
      for (int sub = 0; sub < 8; ++sub) {
        int scale, min;
        reference::k4_scale_min(block + 4, sub, scale, min);
        out.scales.push_back(static_cast<uint16_t>(scale | (min << 8)));
      }
      out.scales.push_back(d);
      out.scales.push_back(static_cast<uint16_t>(dmin ^ 0x8000u));
      for (int sub = 0; sub < 8; ++sub) {
        const uint8_t* q = qs + (sub / 2) * 32;
        const int shift = 4 * (sub % 2);
        uint32_t fifth = 0;
        for (int i = 0; i < 16; ++i) {
          const int lo = (q[i] >> shift) & 0x0f, hi = (q[i + 16] >> shift) & 0x0f;
          out.data.push_back(static_cast<uint8_t>(lo | (hi << 4)));
          if (fifth_bit) {  // element i is byte i's low nibble, element i + 16 its high one
            fifth |= static_cast<uint32_t>((qh[i] >> sub) & 1) << q5_k_fifth_bit(i);
            fifth |= static_cast<uint32_t>((qh[i + 16] >> sub) & 1) << q5_k_fifth_bit(i + 16);
          }
        }
        if (fifth_bit) {
          out.scales.push_back(static_cast<uint16_t>(fifth & 0xffff));
          out.scales.push_back(static_cast<uint16_t>(fifth >> 16));
        }
      }
    }
    out.scales.resize(out.scales.size() + (stride - scales_per_row(out.format, out.cols)), 0);
  }
}

// Q6_K super-blocks -> int8 (q - 32), and a scale record per super-block (kQ6KRecordHalves): the
// sixteen int8 scales as they are, then d's f16 bits, so x = (d * scale) (q - 32) exactly.
void repack_q6_k(HostMatrix& out, const uint8_t* src, int64_t rows) {
  const int supers = out.cols / kSuperBlock;
  const int stride = scale_stride_of(out.format, out.cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int s = 0; s < supers; ++s) {
      const uint8_t* block = src + (r * supers + s) * 210;
      for (int j = 0; j < 16; j += 2)
        out.scales.push_back(static_cast<uint16_t>(block[192 + j] | (block[193 + j] << 8)));
      uint16_t d;
      std::memcpy(&d, block + 208, 2);
      out.scales.push_back(d);
      out.scales.push_back(0);
      for (int e = 0; e < kSuperBlock; ++e) {
        const int half = e / 128, group = (e % 128) / 32, l = e % 32;
        const uint8_t* ql = block + half * 64;
        const uint8_t* qh = block + 128 + half * 32;
        const int low = (ql[(group % 2) * 32 + l] >> (4 * (group / 2))) & 0x0f;
        const int high = (qh[l] >> (2 * group)) & 3;
        out.data.push_back(static_cast<uint8_t>(static_cast<int8_t>((low | (high << 4)) - 32)));
      }
    }
    out.scales.resize(out.scales.size() + (stride - scales_per_row(out.format, out.cols)), 0);
  }
}

}  // namespace

int format_of(TensorType type) {
  switch (type) {
    case TensorType::kF16: return kFmtF16;
    case TensorType::kBF16: return kFmtBF16;
    case TensorType::kQ8_0: return kFmtQ8_0;
    case TensorType::kQ4_0: return kFmtQ4_0;
    case TensorType::kQ4_1: return kFmtQ4_1;
    case TensorType::kQ4_K: return kFmtQ4_K;
    case TensorType::kQ5_K: return kFmtQ5_K;
    case TensorType::kQ6_K: return kFmtQ6_K;
    case TensorType::kUpg3:
    case TensorType::kUpg4: return kFmtUpg;
    default: return -1;
  }
}

bool is_quantized(int format) { return is_quantized_format(format); }

int scales_per_row(int format, int cols) {
  if (!has_scale_stream(format)) return 0;
  if (format == kFmtQ4_K) return cols / kSuperBlock * kQ4KRecordHalves;
  if (format == kFmtQ5_K) return cols / kSuperBlock * kQ5KRecordHalves;
  if (format == kFmtQ6_K) return cols / kSuperBlock * kQ6KRecordHalves;
  return cols / kQuantBlock * scale_halves(format);
}

int scale_stride_of(int format, int cols) { return (scales_per_row(format, cols) + 7) / 8 * 8; }

int row_bytes_of(int format, int cols) {
  switch (format) {
    case kFmtQ8_0:
    case kFmtQ6_K: return cols;
    case kFmtQ4_0:
    case kFmtQ4_1:
    case kFmtQ4_K:
    case kFmtQ5_K:
    case kFmtUpg: return cols / 2;
    default: return cols * 2;
  }
}

void append_rows(HostMatrix& out, const FusedWeightView& w) {
  if (is_upg_type(w.type)) {
    append_upg_rows(out, w);
    return;
  }
  const int format = format_of(w.type);
  PDVM_CHECK(format >= 0 && (out.format < 0 || out.format == format));
  if (out.format < 0) {
    out.format = format;
    out.cols = static_cast<int>(w.cols);
  }
  PDVM_CHECK(out.cols == w.cols);
  const auto* src = static_cast<const uint8_t*>(w.data);
  out.data.reserve(out.data.size() + static_cast<size_t>(w.rows) * row_bytes_of(format, out.cols));
  switch (w.type) {
    case TensorType::kF16:
    case TensorType::kBF16:
      out.data.insert(out.data.end(), src, src + static_cast<size_t>(w.rows) * row_bytes_of(format, out.cols));
      break;
    case TensorType::kQ4_K: repack_k4_family(out, src, w.rows, false); break;
    case TensorType::kQ5_K: repack_k4_family(out, src, w.rows, true); break;
    case TensorType::kQ6_K: repack_q6_k(out, src, w.rows); break;
    default: split_simple_blocks(out, src, w.rows); break;
  }
  out.rows += static_cast<int>(w.rows);
}

}  // namespace pdvm::fused

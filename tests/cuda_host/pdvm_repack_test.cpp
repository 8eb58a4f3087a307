// The fused kernels' repack of quantized weights (src/cuda/pdvm_repack.cu), on the host: the
// quants and scales it writes, read by the layouts pdvm_device.cuh documents (Q8_0/Q4_0/Q4_1: an
// f16 scale, and Q4_1's min, per 32-block; kFmtQ4_K, kFmtQ6_K: one record of ten halves per
// super-block of 256, kFmtQ5_K: Q4_K's record and the eight chunks' fifth-bit words), give back
// the reference's dequantized weights bit for bit. Host code of the CUDA library: runs without a
// GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "cuda/pdvm_repack.h"
#include "pdvm/tensor_type.h"
#include "tensor/reference_blocks.h"
#include "test_support.h"

namespace pdvm::fused {
namespace {

constexpr int kSuperBlock = 256;
constexpr int kRecordHalves = 10;

struct Quantized {
  std::vector<uint8_t> bytes;  // GGUF blocks
  std::vector<float> values;   // the reference's dequantization of them
};

// Random rows of heavy-tailed weights (a few large ones per row) quantized by the reference.
Quantized quantize_rows(TensorType type, int rows, int cols) {
  const int block = type_info(type).block_elems;
  std::vector<float> x = test::random_floats(static_cast<size_t>(rows) * cols, 0.05f);
  std::uniform_int_distribution<size_t> pick(0, x.size() - 1);
  for (int i = 0; i < rows; ++i) x[pick(test::rng())] *= 40.0f;
  Quantized q;
  q.bytes.resize(static_cast<size_t>(type_bytes(type, cols)) * rows);
  q.values.resize(x.size());
  const int64_t blocks = static_cast<int64_t>(rows) * cols / block;
  reference::quantize_blocks(type, x.data(), q.bytes.data(), blocks);
  reference::dequantize_blocks(type, q.bytes.data(), q.values.data(), blocks);
  return q;
}

HostMatrix repack(TensorType type, int rows, int cols, const Quantized& q) {
  HostMatrix m;
  append_rows(m, FusedWeightView{type, cols, rows, q.bytes.data(), "w"});
  EXPECT_EQ(m.format, format_of(type));
  EXPECT_EQ(m.rows, rows);
  EXPECT_EQ(m.scales.size(), static_cast<size_t>(rows) * scale_stride_of(m.format, cols));
  return m;
}

TEST(FusedRepack, SimpleBlocksSplitIntoQuantsAndScales) {
  std::uniform_int_distribution<int> blocks(1, 40);
  for (TensorType type : {TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ4_1}) {
    const int rows = 5, cols = 32 * blocks(test::rng());
    const Quantized q = quantize_rows(type, rows, cols);
    const HostMatrix m = repack(type, rows, cols, q);
    const bool eight_bit = type == TensorType::kQ8_0, with_min = type == TensorType::kQ4_1;
    ASSERT_EQ(m.data.size(), static_cast<size_t>(rows) * cols / (eight_bit ? 1 : 2)) << type_name(type);
    EXPECT_EQ(scales_per_row(m.format, cols), cols / 32 * (with_min ? 2 : 1)) << type_name(type);
    const int stride = scale_stride_of(m.format, cols);
    for (int r = 0; r < rows; ++r) {
      for (int e = 0; e < cols; ++e) {
        const int block = e / 32, in_block = e % 32;
        const uint16_t* scales = m.scales.data() + static_cast<size_t>(r) * stride + block * (with_min ? 2 : 1);
        const float d = fp16_to_fp32(scales[0]);
        float value;
        if (eight_bit) {
          value = static_cast<float>(static_cast<int8_t>(m.data[static_cast<size_t>(r) * cols + e])) * d;
        } else {
          const uint8_t byte = m.data[static_cast<size_t>(r) * cols / 2 + block * 16 + in_block % 16];
          const int quant = in_block < 16 ? byte & 15 : byte >> 4;
          value = with_min ? static_cast<float>(quant) * d + fp16_to_fp32(scales[1]) : static_cast<float>(quant - 8) * d;
        }
        ASSERT_EQ(value, q.values[static_cast<size_t>(r) * cols + e])
            << type_name(type) << ", row " << r << ", element " << e;
      }
    }
  }
}

TEST(FusedRepack, Q4KAndQ5KRecordsGiveTheReferenceWeightsExactly) {
  std::uniform_int_distribution<int> supers(1, 6);
  for (TensorType type : {TensorType::kQ4_K, TensorType::kQ5_K}) {
    const bool fifth_bit = type == TensorType::kQ5_K;
    const int record_halves = kRecordHalves + (fifth_bit ? 16 : 0);
    const int rows = 7, cols = kSuperBlock * supers(test::rng());
    const Quantized q = quantize_rows(type, rows, cols);
    const HostMatrix m = repack(type, rows, cols, q);
    ASSERT_EQ(m.data.size(), static_cast<size_t>(rows) * cols / 2);
    EXPECT_EQ(scales_per_row(m.format, cols), cols / kSuperBlock * record_halves);
    const int stride = scale_stride_of(m.format, cols);
    for (int r = 0; r < rows; ++r) {
      for (int e = 0; e < cols; ++e) {
        // Q4_1's nibbles: byte i of a 32-block holds element i (low) and i + 16 (high).
        const int block = e / 32, in_block = e % 32;
        const uint8_t byte = m.data[static_cast<size_t>(r) * cols / 2 + block * 16 + in_block % 16];
        int quant = in_block < 16 ? byte & 15 : byte >> 4;
        // The record: eight (scale | min << 8) pairs, d, -dmin; Q5_K: then one 32-bit word of fifth
        // bits per 32-block, bit 8 (i % 4) + i / 4 for element i < 16, 8 (i % 4) + 4 + (i - 16) / 4 after.
        const uint16_t* record = m.scales.data() + static_cast<size_t>(r) * stride + block / 8 * record_halves;
        if (fifth_bit) {
          const uint32_t word = record[kRecordHalves + 2 * (block % 8)] |
                                static_cast<uint32_t>(record[kRecordHalves + 2 * (block % 8) + 1]) << 16;
          const int bit = 8 * (in_block % 4) + (in_block < 16 ? in_block / 4 : 4 + (in_block - 16) / 4);
          quant |= static_cast<int>((word >> bit) & 1) << 4;
        }
        const uint16_t pair = record[block % 8];
        const float scale = fp16_to_fp32(record[8]) * static_cast<float>(pair & 0xff);
        const float min = fp16_to_fp32(record[9]) * static_cast<float>(pair >> 8);
        ASSERT_EQ(scale * static_cast<float>(quant) + min, q.values[static_cast<size_t>(r) * cols + e])
            << type_name(type) << ", row " << r << ", element " << e;
      }
    }
  }
}

TEST(FusedRepack, Q6KRecordsGiveTheReferenceWeightsExactly) {
  std::uniform_int_distribution<int> supers(1, 6);
  const int rows = 7, cols = kSuperBlock * supers(test::rng());
  const Quantized q = quantize_rows(TensorType::kQ6_K, rows, cols);
  const HostMatrix m = repack(TensorType::kQ6_K, rows, cols, q);
  ASSERT_EQ(m.data.size(), static_cast<size_t>(rows) * cols);
  EXPECT_EQ(scales_per_row(m.format, cols), cols / kSuperBlock * kRecordHalves);
  const int stride = scale_stride_of(m.format, cols);
  for (int r = 0; r < rows; ++r) {
    for (int e = 0; e < cols; ++e) {
      const int quant = static_cast<int8_t>(m.data[static_cast<size_t>(r) * cols + e]);  // q - 32
      // The record: sixteen int8 scales (one per 16 elements), then d.
      const uint16_t* record = m.scales.data() + static_cast<size_t>(r) * stride + e / kSuperBlock * kRecordHalves;
      const int j = e % kSuperBlock / 16;
      const int scale = static_cast<int8_t>(record[j / 2] >> (8 * (j % 2)));
      ASSERT_EQ(fp16_to_fp32(record[8]) * static_cast<float>(scale) * static_cast<float>(quant),
                q.values[static_cast<size_t>(r) * cols + e])
          << "row " << r << ", element " << e;
    }
  }
}

}  // namespace
}  // namespace pdvm::fused

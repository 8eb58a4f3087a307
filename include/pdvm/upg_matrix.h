// The in-memory view of a UPG matrix (format: pdvm/upg.h, docs/upg.md). Kept apart from
// upg.h so that CUDA sources (C++17) can include it without the GGUF reader.
#pragma once

#include <cstdint>

#include "pdvm/tensor_type.h"

namespace pdvm {

inline constexpr uint32_t kUpgVersion = 1;
// Elements per code group: 4-bit codes fill 16 bytes, 3-bit codes 12 bytes per group.
inline constexpr int64_t kUpgGroup = 32;

// A UPG matrix: views of its component arrays in host memory (usually the mapped file).
// Outlier arrays are null when nnz == 0; exactly one of sp_idx16 / sp_idx32 is set otherwise
// (16-bit columns when k <= 65536).
struct UpgMatrix {
  int bits = 4;            // 4 (16-entry table) or 3 (8-entry table)
  int64_t k = 0;           // elements per row
  int64_t n = 0;           // rows
  int64_t block = 32;      // elements per block scale: 32, 64 or 128
  const uint8_t* codes = nullptr;   // [n][k * bits / 8]
  const int8_t* bscale = nullptr;   // [n][k / block]
  const int8_t* lut = nullptr;      // [n][1 << bits]
  const float* rscale = nullptr;    // [n]
  int64_t nnz = 0;
  const int32_t* sp_rowptr = nullptr;  // [n + 1], rows' outliers are [rowptr[r], rowptr[r+1])
  const uint16_t* sp_idx16 = nullptr;  // [nnz] columns, increasing within a row
  const uint32_t* sp_idx32 = nullptr;
  const uint16_t* sp_val = nullptr;    // [nnz] f16 deltas

  TensorType type() const { return bits == 3 ? TensorType::kUpg3 : TensorType::kUpg4; }
  int64_t levels() const { return int64_t{1} << bits; }
  int64_t code_row_bytes() const { return k * bits / 8; }
  uint32_t outlier_column(int64_t i) const { return sp_idx16 ? sp_idx16[i] : sp_idx32[i]; }
  // Bytes of all components together.
  uint64_t n_bytes() const;
};

}  // namespace pdvm

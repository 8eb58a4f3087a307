// UPG: the engine's compressed weight format (spec: docs/upg.md). A weight matrix of n rows of
// k elements is stored as low-bit codes indexing a per-row int8 table (the "prime LUT"), an
// int8 signed scale per block, an fp32 scale per row and an optional sparse list of f16
// corrections (outliers):
//
//   w[r][c] = rscale[r] * bscale[r][c / B] * lut[r][code(r, c)]  (+ delta for listed (r, c))
//
// The components are ordinary GGUF tensors named NAME.upg.codes, .bscale, .lut, .rscale and,
// with outliers, .sp_rowptr, .sp_idx, .sp_val, so the file stays a valid GGUF.
// upg_dequantize_row is the definition of the format; every kernel is tested against it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pdvm/backend.h"
#include "pdvm/gguf.h"
#include "pdvm/tensor_type.h"
#include "pdvm/upg_matrix.h"

namespace pdvm {

// "NAME.upg.COMPONENT".
std::string upg_component_name(std::string_view weight, std::string_view component);
// Whether `file` stores `weight` as UPG components (its .upg.codes tensor exists).
bool has_upg_weight(const GgufFile& file, std::string_view weight);
// Whether `file` has `weight` as a plain tensor or as a UPG matrix.
bool has_weight(const GgufFile& file, std::string_view weight);
// The logical shape of `weight`, plain or UPG; Error(kFileFormat) naming it when absent.
std::vector<int64_t> weight_shape(const GgufFile& file, std::string_view weight);
// The validated matrix `weight` of `file`: upg.version known, every component present with
// the right type and consistent shape, row pointers monotonic and within upg.outlier_cap,
// columns in range and increasing, scales finite. Error(kFileFormat) naming tensor and field.
UpgMatrix upg_matrix(const GgufFile& file, std::string_view weight);
// The content checks of upg_matrix on an in-memory view (shapes are taken as given).
void validate_upg_matrix(const UpgMatrix& m, std::string_view name, int64_t outlier_cap);

// Code of element `col` of `row`.
uint8_t upg_code(const UpgMatrix& m, int64_t row, int64_t col);
// Reference decompressor: row `row` as fp32 (k values).
void upg_dequantize_row(const UpgMatrix& m, int64_t row, float* out);

// Backend::load_weight for a UPG type receives `bytes` pointing to a UpgMatrix. Host backends
// keep a copy of the view (not of the arrays, which stay in the mapped file, as for other
// weights): the returned Tensor's data points to that copy, n_bytes counts the components.
Tensor host_upg_weight(TensorType type, std::array<int64_t, 4> ne, const void* view);

// ---- encoder -------------------------------------------------------------------------------

struct UpgEncodeOptions {
  int bits = 4;
  int64_t block = 32;
  double outlier_fraction = 0.0;  // per row, at most ceil(fraction * k) outliers
};

// An encoded matrix owning its components.
struct UpgEncoded {
  int bits = 4;
  int64_t k = 0, n = 0, block = 32;
  std::vector<uint8_t> codes;
  std::vector<int8_t> bscale, lut;
  std::vector<float> rscale;
  std::vector<int32_t> sp_rowptr;  // empty when there are no outliers
  std::vector<uint16_t> sp_idx16;
  std::vector<uint32_t> sp_idx32;
  std::vector<uint16_t> sp_val;

  UpgMatrix view() const;
  int64_t outlier_cap() const;  // the largest number of outliers of any row
};

// Encodes n rows of k floats. importance (k values, E[x_j^2] of the matmul input) weights the
// error of each column; null means all 1. Rows are independent, so the result is the same for
// any thread count.
UpgEncoded upg_encode(const float* w, int64_t k, int64_t n, const float* importance,
                      const UpgEncodeOptions& options, int threads);

// Importance-weighted squared error sum_j h_j (w_j - v_j)^2 and plain squared error of a row.
struct RowError {
  double weighted = 0.0;
  double plain = 0.0;
};
RowError row_error(const float* w, const float* v, const float* importance, int64_t k);

}  // namespace pdvm

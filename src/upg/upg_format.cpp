// UPG v1 container: finding a matrix's component tensors in a GGUF file, validating them, and
// the reference decompressor that defines the format.
#include <cmath>
#include <string>

#include "model/shape_string.h"
#include "pdvm/error.h"
#include "pdvm/upg.h"

namespace pdvm {
namespace {

[[noreturn]] void fail(std::string_view name, const std::string& what) {
  throw_error(ErrorKind::kFileFormat, "UPG tensor " + std::string(name) + ": " + what);
}

// The component `component` of `weight`: present, of `type`, with exactly `shape`.
const GgufTensor& component(const GgufFile& file, std::string_view weight, std::string_view component,
                            TensorType type, const std::vector<int64_t>& shape) {
  const std::string name = upg_component_name(weight, component);
  const GgufTensor* t = file.find_tensor(name);
  if (t == nullptr) fail(weight, "missing component tensor " + name);
  if (t->type != type) {
    fail(weight, name + " has type " + std::string(type_name(t->type)) + ", expected " +
                     std::string(type_name(type)));
  }
  if (t->shape != shape) {
    fail(weight, name + " has shape " + shape_string(t->shape) + ", expected " + shape_string(shape));
  }
  return *t;
}

}  // namespace

uint64_t UpgMatrix::n_bytes() const {
  const int64_t outlier_bytes = nnz > 0 ? (n + 1) * 4 + nnz * (sp_idx16 ? 2 : 4) + nnz * 2 : 0;
  return static_cast<uint64_t>(n * (code_row_bytes() + k / block + levels() + 4) + outlier_bytes);
}

std::string upg_component_name(std::string_view weight, std::string_view component) {
  return std::string(weight) + ".upg." + std::string(component);
}

bool has_upg_weight(const GgufFile& file, std::string_view weight) {
  return file.find_tensor(upg_component_name(weight, "codes")) != nullptr;
}

bool has_weight(const GgufFile& file, std::string_view weight) {
  return file.find_tensor(weight) != nullptr || has_upg_weight(file, weight);
}

std::vector<int64_t> weight_shape(const GgufFile& file, std::string_view weight) {
  if (file.find_tensor(weight) == nullptr && has_upg_weight(file, weight)) {
    const UpgMatrix m = upg_matrix(file, weight);
    return {m.k, m.n};
  }
  return file.tensor_required(weight).shape;
}

UpgMatrix upg_matrix(const GgufFile& file, std::string_view weight) {
  const GgufValue* version = file.find("upg.version");
  if (version == nullptr) fail(weight, "the file has no upg.version key");
  if (!version->is_integer() || version->as_int() != kUpgVersion) {
    fail(weight, "upg.version is " + version->to_display_string() + ", this build reads version " +
                     std::to_string(kUpgVersion));
  }
  const GgufTensor* rscale_tensor = file.find_tensor(upg_component_name(weight, "rscale"));
  const GgufTensor* lut_tensor = file.find_tensor(upg_component_name(weight, "lut"));
  const GgufTensor* bscale_tensor = file.find_tensor(upg_component_name(weight, "bscale"));
  const GgufTensor* codes_tensor = file.find_tensor(upg_component_name(weight, "codes"));
  if (!rscale_tensor || !lut_tensor || !bscale_tensor || !codes_tensor) {
    fail(weight, "needs the components codes, bscale, lut and rscale");
  }
  for (const GgufTensor* t : {codes_tensor, bscale_tensor, lut_tensor}) {
    if (t->type != TensorType::kI8) fail(weight, t->name + " has type " + std::string(type_name(t->type)) + ", expected i8");
  }
  if (lut_tensor->shape.size() != 2) fail(weight, "lut must be 2-D, has shape " + shape_string(lut_tensor->shape));
  UpgMatrix m;
  const int64_t levels = lut_tensor->shape[0];
  if (levels != 16 && levels != 8) fail(weight, "lut has " + std::to_string(levels) + " entries per row, expected 16 or 8");
  m.bits = levels == 16 ? 4 : 3;
  m.n = lut_tensor->shape[1];
  if (codes_tensor->shape.size() != 2 || bscale_tensor->shape.size() != 2) {
    fail(weight, "codes and bscale must be 2-D");
  }
  const int64_t code_bytes = codes_tensor->shape[0];
  if (code_bytes <= 0 || code_bytes * 8 % m.bits != 0) {
    fail(weight, "codes row of " + std::to_string(code_bytes) + " bytes is no whole number of codes");
  }
  m.k = code_bytes * 8 / m.bits;
  if (m.k % kUpgGroup != 0) fail(weight, "row length " + std::to_string(m.k) + " is not a multiple of 32");
  const int64_t n_blocks = bscale_tensor->shape[0];
  if (n_blocks <= 0 || m.k % n_blocks != 0) {
    fail(weight, "bscale has " + std::to_string(n_blocks) + " blocks per row for rows of " + std::to_string(m.k));
  }
  m.block = m.k / n_blocks;
  if (m.block != 32 && m.block != 64 && m.block != 128) {
    fail(weight, "block size " + std::to_string(m.block) + " is not 32, 64 or 128");
  }
  m.codes = component(file, weight, "codes", TensorType::kI8, {code_bytes, m.n}).data;
  m.bscale = reinterpret_cast<const int8_t*>(component(file, weight, "bscale", TensorType::kI8, {n_blocks, m.n}).data);
  m.lut = reinterpret_cast<const int8_t*>(lut_tensor->data);
  m.rscale = reinterpret_cast<const float*>(component(file, weight, "rscale", TensorType::kF32, {m.n}).data);

  int64_t cap = 0;
  if (const GgufTensor* rowptr = file.find_tensor(upg_component_name(weight, "sp_rowptr"))) {
    const GgufTensor& idx = [&]() -> const GgufTensor& {
      const GgufTensor* t = file.find_tensor(upg_component_name(weight, "sp_idx"));
      if (t == nullptr) fail(weight, "has sp_rowptr but no sp_idx");
      return *t;
    }();
    if (idx.shape.size() != 1) fail(weight, "sp_idx must be 1-D");
    m.nnz = idx.shape[0];
    const TensorType idx_type = m.k <= 65536 ? TensorType::kI16 : TensorType::kI32;
    component(file, weight, "sp_idx", idx_type, {m.nnz});
    if (idx_type == TensorType::kI16) {
      m.sp_idx16 = reinterpret_cast<const uint16_t*>(idx.data);
    } else {
      m.sp_idx32 = reinterpret_cast<const uint32_t*>(idx.data);
    }
    m.sp_val = reinterpret_cast<const uint16_t*>(component(file, weight, "sp_val", TensorType::kF16, {m.nnz}).data);
    component(file, weight, "sp_rowptr", TensorType::kI32, {m.n + 1});
    m.sp_rowptr = reinterpret_cast<const int32_t*>(rowptr->data);
    const GgufValue* cap_value = file.find("upg.outlier_cap");
    if (cap_value == nullptr || !cap_value->is_integer()) fail(weight, "has outliers but the file has no integer upg.outlier_cap");
    cap = cap_value->as_int();
  } else if (file.find_tensor(upg_component_name(weight, "sp_idx")) ||
             file.find_tensor(upg_component_name(weight, "sp_val"))) {
    fail(weight, "has sp_idx or sp_val but no sp_rowptr");
  }
  validate_upg_matrix(m, weight, cap);
  return m;
}

void validate_upg_matrix(const UpgMatrix& m, std::string_view name, int64_t outlier_cap) {
  for (int64_t r = 0; r < m.n; ++r) {
    if (!std::isfinite(m.rscale[r])) fail(name, "rscale of row " + std::to_string(r) + " is not finite");
  }
  if (m.nnz == 0) return;
  if (m.sp_rowptr[0] != 0) fail(name, "sp_rowptr[0] is " + std::to_string(m.sp_rowptr[0]) + ", expected 0");
  if (m.sp_rowptr[m.n] != m.nnz) {
    fail(name, "sp_rowptr ends at " + std::to_string(m.sp_rowptr[m.n]) + ", expected nnz " + std::to_string(m.nnz));
  }
  for (int64_t r = 0; r < m.n; ++r) {
    const int64_t begin = m.sp_rowptr[r], end = m.sp_rowptr[r + 1];
    if (end < begin || end > m.nnz) {
      fail(name, "sp_rowptr is not monotonic at row " + std::to_string(r) + " (" + std::to_string(begin) +
                     " then " + std::to_string(end) + ")");
    }
    if (end - begin > outlier_cap) {
      fail(name, "row " + std::to_string(r) + " has " + std::to_string(end - begin) +
                     " outliers, more than upg.outlier_cap " + std::to_string(outlier_cap));
    }
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t col = m.outlier_column(i);
      if (col >= static_cast<uint64_t>(m.k)) {
        fail(name, "outlier " + std::to_string(i) + " of row " + std::to_string(r) + " has column " +
                       std::to_string(col) + ", outside the row of " + std::to_string(m.k));
      }
      if (i > begin && col <= m.outlier_column(i - 1)) {
        fail(name, "outlier columns of row " + std::to_string(r) + " are not increasing at entry " + std::to_string(i));
      }
      if (!std::isfinite(fp16_to_fp32(m.sp_val[i]))) fail(name, "outlier value " + std::to_string(i) + " is not finite");
    }
  }
}

uint8_t upg_code(const UpgMatrix& m, int64_t row, int64_t col) {
  const uint8_t* group = m.codes + row * m.code_row_bytes() + col / kUpgGroup * (kUpgGroup * m.bits / 8);
  const int64_t e = col % kUpgGroup;
  if (m.bits == 4) return e < 16 ? group[e] & 15 : group[e - 16] >> 4;
  // 3-bit: bytes 0-7 hold the low two bits of elements i, i+8, i+16, i+24; bytes 8-11 the high bits.
  const uint8_t low = (group[e % 8] >> (2 * (e / 8))) & 3;
  const uint8_t high = (group[8 + e / 8] >> (e % 8)) & 1;
  return static_cast<uint8_t>(low | high << 2);
}

void upg_dequantize_row(const UpgMatrix& m, int64_t row, float* out) {
  PDVM_CHECK(row >= 0 && row < m.n);
  const int8_t* lut = m.lut + row * m.levels();
  const int8_t* bscale = m.bscale + row * (m.k / m.block);
  for (int64_t c = 0; c < m.k; ++c) {
    out[c] = m.rscale[row] * static_cast<float>(bscale[c / m.block] * lut[upg_code(m, row, c)]);
  }
  if (m.nnz == 0) return;
  for (int64_t i = m.sp_rowptr[row]; i < m.sp_rowptr[row + 1]; ++i) out[m.outlier_column(i)] += fp16_to_fp32(m.sp_val[i]);
}

Tensor host_upg_weight(TensorType type, std::array<int64_t, 4> ne, const void* view) {
  const auto& m = *static_cast<const UpgMatrix*>(view);
  PDVM_CHECK(is_upg_type(type) && m.type() == type && ne[0] == m.k && ne[1] == m.n && ne[2] == 1 && ne[3] == 1);
  Tensor t;
  t.type = type;
  t.ne = ne;
  auto copy = std::make_shared<UpgMatrix>(m);
  t.data = copy.get();
  t.n_bytes = m.n_bytes();
  t.owner = std::move(copy);
  return t;
}

UpgMatrix UpgEncoded::view() const {
  UpgMatrix m;
  m.bits = bits;
  m.k = k;
  m.n = n;
  m.block = block;
  m.codes = codes.data();
  m.bscale = bscale.data();
  m.lut = lut.data();
  m.rscale = rscale.data();
  m.nnz = static_cast<int64_t>(sp_val.size());
  if (m.nnz > 0) {
    m.sp_rowptr = sp_rowptr.data();
    m.sp_idx16 = sp_idx16.empty() ? nullptr : sp_idx16.data();
    m.sp_idx32 = sp_idx32.empty() ? nullptr : sp_idx32.data();
    m.sp_val = sp_val.data();
  }
  return m;
}

int64_t UpgEncoded::outlier_cap() const {
  int64_t cap = 0;
  for (size_t r = 0; r + 1 < sp_rowptr.size(); ++r) cap = std::max<int64_t>(cap, sp_rowptr[r + 1] - sp_rowptr[r]);
  return cap;
}

}  // namespace pdvm

// UPG matrices in the PDVM kernel layout (DevMatrix kFmtUpg): codes as consecutive nibbles,
// one side record per row (pdvm_upg_layout.h), outliers as one CSR per matrix with 16-bit columns.
// UPG3 codes take a nibble each here (high bit 0, the table's upper half unused): the kernels
// are shared, UPG3 gains no bandwidth over UPG4 in the fused path.
#include <cstring>
#include <limits>

#include "cuda/pdvm_repack.h"
#include "cuda/pdvm_upg_layout.h"
#include "pdvm/error.h"
#include "pdvm/upg.h"

namespace pdvm::fused {
namespace {

int block_shift_of(int64_t block) { return block == 32 ? 0 : block == 64 ? 1 : 2; }

template <class T>
void put(std::vector<uint8_t>& bytes, size_t offset, T value) {
  std::memcpy(bytes.data() + offset, &value, sizeof(T));
}

}  // namespace

int upg_side_stride(int cols, int block) { return (kUpgBlockScales + cols / block + 15) / 16 * 16; }

std::string upg_unsupported_reason(const FusedWeightView& w) {
  const auto& m = *static_cast<const UpgMatrix*>(w.data);
  if (m.k > 65536) return "UPG tensor " + w.name + " has rows of more than 65536 elements";
  if (m.block != 32 && m.block != 64 && m.block != 128)
    return "UPG tensor " + w.name + " has block size " + std::to_string(m.block);
  return {};
}

void append_upg_rows(HostMatrix& out, const FusedWeightView& w) {
  const auto& m = *static_cast<const UpgMatrix*>(w.data);
  PDVM_CHECK(m.k == w.cols && m.n == w.rows && upg_unsupported_reason(w).empty());
  const int cols = static_cast<int>(m.k);
  const int upg_format = format_of(m.type());
  if (out.format < 0) {
    out.format = upg_format;
    out.cols = cols;
    out.block_shift = block_shift_of(m.block);
    out.side_stride = upg_side_stride(cols, static_cast<int>(m.block));
  }
  PDVM_CHECK(out.format == upg_format && out.cols == cols && out.block_shift == block_shift_of(m.block));
  const int64_t blocks = m.k / m.block, levels = m.levels();
  out.data.reserve(out.data.size() + static_cast<size_t>(m.n) * cols / 2);
  for (int64_t r = 0; r < m.n; ++r) {
    for (int64_t c = 0; c < m.k; c += 2)
      out.data.push_back(static_cast<uint8_t>(upg_code(m, r, c) | upg_code(m, r, c + 1) << 4));
    const size_t base = out.side.size();
    out.side.resize(base + out.side_stride, 0);
    std::memcpy(out.side.data() + base, m.lut + r * levels, static_cast<size_t>(levels));
    put(out.side, base + kUpgRowScale, m.rscale[r]);
    const size_t begin = out.outlier_col.size();
    if (m.nnz > 0) {
      for (int64_t i = m.sp_rowptr[r]; i < m.sp_rowptr[r + 1]; ++i) {
        out.outlier_col.push_back(static_cast<uint16_t>(m.outlier_column(i)));
        out.outlier_val.push_back(m.sp_val[i]);
      }
    }
    PDVM_CHECK(out.outlier_col.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()));
    put(out.side, base + kUpgOutlierRange, static_cast<int32_t>(begin));
    put(out.side, base + kUpgOutlierRange + 4, static_cast<int32_t>(out.outlier_col.size()));
    std::memcpy(out.side.data() + base + kUpgBlockScales, m.bscale + r * blocks, static_cast<size_t>(blocks));
  }
  out.rows += static_cast<int>(m.n);
}

}  // namespace pdvm::fused

#include <cstring>
#include <string>
#include <vector>

#include "cuda/weights.cuh"
#include "pdvm/error.h"

namespace pdvm::cuda {
namespace {

constexpr int64_t kQK = 32;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

WeightFormat format_of(TensorType type, uint32_t layout) {
  if (layout == kLayoutConvertedF16) return WeightFormat::kF16;
  switch (type) {
    case TensorType::kF32: return WeightFormat::kF32;
    case TensorType::kF16: return WeightFormat::kF16;
    case TensorType::kBF16: return WeightFormat::kBF16;
    case TensorType::kQ8_0: return WeightFormat::kQ8_0;
    case TensorType::kQ4_0: return WeightFormat::kQ4_0;
    case TensorType::kQ4_1: return WeightFormat::kQ4_1;
    case TensorType::kQ4_K: return WeightFormat::kQ4_K;
    case TensorType::kQ5_K: return WeightFormat::kQ5_K;
    case TensorType::kQ6_K: return WeightFormat::kQ6_K;
    default: break;
  }
  throw_error(ErrorKind::kInternal, "cuda: no device format for " + std::string(type_name(type)));
}

int64_t dense_elem_bytes(WeightFormat format) { return format == WeightFormat::kF32 ? 4 : 2; }

// Bytes per row of the quant stream and, for split layouts, of the scale stream.
void row_streams(TensorType type, uint32_t layout, int64_t k, int64_t& q_bytes, int64_t& scale_bytes) {
  const WeightFormat format = format_of(type, layout);
  scale_bytes = 0;
  switch (layout) {
    case kLayoutDenseRows:
    case kLayoutConvertedF16:
      q_bytes = round_up(k, chunk_elems(format)) * dense_elem_bytes(format);
      return;
    case kLayoutSplitBlocks:
      q_bytes = (k / kQK) * (type == TensorType::kQ8_0 ? 32 : 16);
      scale_bytes = (k / kQK) * (type == TensorType::kQ4_1 ? 4 : 2);
      return;
    default:
      q_bytes = type_bytes(type, k);
      return;
  }
}

}  // namespace

int chunk_elems(WeightFormat format) {
  int elems = 0;
  dispatch_format(format, [&](auto f) { elems = decltype(f)::kChunk; });
  return elems;
}

uint32_t layout_for(TensorType type) {
  switch (type) {
    case TensorType::kF32:
    case TensorType::kF16:
    case TensorType::kBF16: return kLayoutDenseRows;
    case TensorType::kQ8_0:
    case TensorType::kQ4_0:
    case TensorType::kQ4_1: return kLayoutSplitBlocks;
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
    case TensorType::kQ6_K: return kLayoutGguf;
    default: break;
  }
  if (type_info(type).dequantizable) return kLayoutConvertedF16;
  throw_error(ErrorKind::kUnsupported,
              "cuda: weights of type " + std::string(type_name(type)) + " are not supported");
}

uint64_t repacked_bytes(TensorType type, int64_t k, int64_t n_rows) {
  int64_t q_bytes = 0, scale_bytes = 0;
  row_streams(type, layout_for(type), k, q_bytes, scale_bytes);
  return static_cast<uint64_t>((q_bytes + scale_bytes) * n_rows);
}

void repack_weight(TensorType type, int64_t k, int64_t n_rows, const uint8_t* src, uint8_t* dst) {
  const uint32_t layout = layout_for(type);
  int64_t q_bytes = 0, scale_bytes = 0;
  row_streams(type, layout, k, q_bytes, scale_bytes);
  const int64_t src_row = type_bytes(type, k);
  if (layout == kLayoutGguf) {
    std::memcpy(dst, src, static_cast<size_t>(src_row * n_rows));
    return;
  }
  if (layout == kLayoutDenseRows) {
    for (int64_t r = 0; r < n_rows; ++r) {
      std::memcpy(dst + r * q_bytes, src + r * src_row, static_cast<size_t>(src_row));
      std::memset(dst + r * q_bytes + src_row, 0, static_cast<size_t>(q_bytes - src_row));
    }
    return;
  }
  if (layout == kLayoutConvertedF16) {
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t r = 0; r < n_rows; ++r) {
      dequantize_row(type, src + r * src_row, row.data(), k);
      uint8_t* out = dst + r * q_bytes;
      std::memset(out, 0, static_cast<size_t>(q_bytes));
      for (int64_t i = 0; i < k; ++i) {
        const uint16_t h = fp32_to_fp16(row[static_cast<size_t>(i)]);
        std::memcpy(out + 2 * i, &h, 2);
      }
    }
    return;
  }
  // Split blocks: GGUF block = scale(s) then quants; the quants keep their order.
  const int64_t block_bytes = type_info(type).block_bytes;
  const int64_t head = block_bytes - q_bytes / (k / kQK);  // 2 (d) or 4 (d, m)
  uint8_t* scales = dst + q_bytes * n_rows;
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int64_t b = 0; b < k / kQK; ++b) {
      const uint8_t* block = src + r * src_row + b * block_bytes;
      std::memcpy(dst + r * q_bytes + b * (block_bytes - head), block + head, static_cast<size_t>(block_bytes - head));
      std::memcpy(scales + r * scale_bytes + b * head, block, static_cast<size_t>(head));
    }
  }
}

WeightView weight_view(const Tensor& w) {
  WeightView view;
  view.format = format_of(w.type, w.layout);
  view.k = w.ne[0];
  view.n_rows = w.n_rows();
  int64_t q_bytes = 0, scale_bytes = 0;
  row_streams(w.type, w.layout, view.k, q_bytes, scale_bytes);
  view.q = static_cast<const uint8_t*>(w.data);
  view.q_row_bytes = q_bytes;
  view.scales = scale_bytes > 0 ? view.q + q_bytes * view.n_rows : nullptr;
  view.blocks_per_row = view.k / type_info(w.type).block_elems;
  const int chunk = chunk_elems(view.format);
  view.n_chunks = (w.layout == kLayoutDenseRows || w.layout == kLayoutConvertedF16) ? round_up(view.k, chunk) / chunk
                                                                                    : view.k / chunk;
  return view;
}

}  // namespace pdvm::cuda

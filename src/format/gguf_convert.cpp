#include "format/gguf_convert.h"

#include <algorithm>
#include <string>
#include <vector>

#include "pdvm/error.h"
#include "util/parallel_rows.h"

namespace pdvm {

uint32_t llama_file_type(TensorType weight_type) {
  switch (weight_type) {  // llama.cpp's LLAMA_FTYPE_* values
    case TensorType::kF32: return 0;
    case TensorType::kF16: return 1;
    case TensorType::kQ4_0: return 2;
    case TensorType::kQ4_1: return 3;
    case TensorType::kQ8_0: return 7;
    case TensorType::kQ5_0: return 8;
    case TensorType::kQ5_1: return 9;
    case TensorType::kQ4_K: return 14;  // "Q4_K_S": every matrix Q4_K
    case TensorType::kQ5_K: return 16;  // "Q5_K_S"
    case TensorType::kQ6_K: return 18;
    case TensorType::kBF16: return 32;
    default: break;
  }
  throw Error(ErrorKind::kInvalidArgument,
              "tensor type " + std::string(type_name(weight_type)) + " is not a supported model file type");
}

TensorType matrix_type(TensorType target, int64_t row_length, const std::string& tensor_name) {
  TensorType type = target;
  if (row_length % type_info(type).block_elems != 0) {
    if (type == TensorType::kQ4_K) type = TensorType::kQ5_0;
    if (type == TensorType::kQ5_K) type = TensorType::kQ5_1;
    if (type == TensorType::kQ6_K) type = TensorType::kQ8_0;
  }
  const TypeInfo& info = type_info(type);
  if (row_length % info.block_elems != 0) {
    throw Error(ErrorKind::kInvalidArgument, tensor_name + ": row length " + std::to_string(row_length) +
                                                 " is not a multiple of the " + info.name + " block size " +
                                                 std::to_string(info.block_elems));
  }
  return type;
}

TensorType converted_type(const GgufTensor& tensor, TensorType target) {
  return tensor.shape.size() >= 2 ? matrix_type(target, tensor.shape[0], tensor.name) : TensorType::kF32;
}

void convert_gguf(const GgufFile& in, const std::filesystem::path& out, TensorType target, int threads,
                  const std::function<void(uint64_t, uint64_t)>& progress) {
  const uint32_t file_type = llama_file_type(target);

  GgufWriter writer(in.alignment());
  for (const GgufKeyValue& kv : in.metadata()) writer.set(kv.key, kv.value);
  writer.set("general.file_type", GgufValue(file_type));

  for (const GgufTensor& tensor : in.tensors()) {
    const TensorType type = converted_type(tensor, target);
    const int64_t row = tensor.shape.empty() ? 1 : tensor.shape[0];
    if (!type_info(tensor.type).dequantizable) {
      throw Error(ErrorKind::kUnsupported, "tensor '" + tensor.name + "' has type " +
                                               std::string(type_name(tensor.type)) + ", which cannot be converted");
    }
    writer.add_tensor(tensor.name, type, tensor.shape, [&tensor, type, row, threads](std::span<uint8_t> dst) {
      const int64_t n_rows = tensor.n_elems() / row;
      const int64_t src_row_bytes = type_bytes(tensor.type, row);
      const int64_t dst_row_bytes = type_bytes(type, row);
      PDVM_CHECK(static_cast<int64_t>(dst.size()) == n_rows * dst_row_bytes);
      PDVM_CHECK(static_cast<int64_t>(tensor.n_bytes) == n_rows * src_row_bytes);
      parallel_rows(n_rows, threads, [&](int64_t begin, int64_t end) {
        std::vector<float> values(static_cast<size_t>(row));
        for (int64_t r = begin; r < end; ++r) {
          dequantize_row(tensor.type, tensor.data + r * src_row_bytes, values.data(), row);
          quantize_row(type, values.data(), dst.data() + r * dst_row_bytes, row);
        }
      });
    });
  }
  writer.write(out, progress);
}

}  // namespace pdvm

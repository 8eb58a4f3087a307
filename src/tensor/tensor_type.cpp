// The table of GGML tensor types and the per-type dispatch of the reference conversions.
#include "pdvm/tensor_type.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

#include "pdvm/error.h"
#include "tensor/reference_blocks.h"

namespace pdvm {

namespace {

using T = TensorType;

// Block geometry as GGML defines it (elements per block, bytes per block).
constexpr std::array kTypes = {
    TypeInfo{T::kF32, "f32", 1, 4, true, true},
    TypeInfo{T::kF16, "f16", 1, 2, true, true},
    TypeInfo{T::kQ4_0, "q4_0", 32, 18, true, true},
    TypeInfo{T::kQ4_1, "q4_1", 32, 20, true, true},
    TypeInfo{T::kQ5_0, "q5_0", 32, 22, true, true},
    TypeInfo{T::kQ5_1, "q5_1", 32, 24, true, true},
    TypeInfo{T::kQ8_0, "q8_0", 32, 34, true, true},
    // GGML's current block_q8_1 is fp16 d, fp16 s, 32 int8 (36 bytes); the gguf Python
    // package's size table still lists the old 40-byte float layout.
    TypeInfo{T::kQ8_1, "q8_1", 32, 36, true, true},
    TypeInfo{T::kQ2_K, "q2_k", 256, 84, true, false},
    TypeInfo{T::kQ3_K, "q3_k", 256, 110, true, false},
    TypeInfo{T::kQ4_K, "q4_k", 256, 144, true, true},
    TypeInfo{T::kQ5_K, "q5_k", 256, 176, true, true},
    TypeInfo{T::kQ6_K, "q6_k", 256, 210, true, true},
    TypeInfo{T::kQ8_K, "q8_k", 256, 292, true, false},
    TypeInfo{T::kI8, "i8", 1, 1, true, false},
    TypeInfo{T::kI16, "i16", 1, 2, true, false},
    TypeInfo{T::kI32, "i32", 1, 4, true, false},
    TypeInfo{T::kI64, "i64", 1, 8, true, false},
    TypeInfo{T::kF64, "f64", 1, 8, true, false},
    TypeInfo{T::kBF16, "bf16", 1, 2, true, true},
};

// Logical types (pdvm/upg.h): named for flags and messages, never accepted as on-disk ids.
// block_bytes counts only the codes; tables and scales are per row and per block.
constexpr std::array kLogicalTypes = {
    TypeInfo{T::kUpg3, "upg3", 32, 12, false, false},
    TypeInfo{T::kUpg4, "upg4", 32, 16, false, false},
};

const TypeInfo* find_info(uint32_t raw_id) {
  for (const TypeInfo& info : kTypes) {
    if (static_cast<uint32_t>(info.type) == raw_id) return &info;
  }
  return nullptr;
}

const TypeInfo* find_any_info(TensorType type) {
  if (const TypeInfo* info = find_info(static_cast<uint32_t>(type))) return info;
  for (const TypeInfo& info : kLogicalTypes) {
    if (info.type == type) return &info;
  }
  return nullptr;
}

std::string describe(TensorType type) {
  if (const TypeInfo* info = find_any_info(type)) return info->name;
  return "unknown tensor type id " + std::to_string(static_cast<uint32_t>(type));
}

// Validates n against the block size and returns the number of blocks.
int64_t checked_blocks(const TypeInfo& info, int64_t n) {
  if (n < 0 || n % info.block_elems != 0) {
    throw Error(ErrorKind::kInvalidArgument,
                std::to_string(n) + " elements is not a whole number of " + info.name + " blocks (" +
                    std::to_string(info.block_elems) + " elements each)");
  }
  return n / info.block_elems;
}

const TypeInfo& info_or_unsupported(TensorType type, const char* what) {
  const TypeInfo* info = find_any_info(type);
  if (info == nullptr) {
    throw Error(ErrorKind::kUnsupported, std::string(what) + ": " + describe(type));
  }
  return *info;
}

// Plain GGML types only: the logical types have no row layout of their own.
const TypeInfo& ggml_info_or_unsupported(TensorType type, const char* what) {
  const TypeInfo& info = info_or_unsupported(type, what);
  if (is_upg_type(type)) {
    throw Error(ErrorKind::kUnsupported, std::string(what) + ": " + info.name +
                                             " (a UPG matrix has no fixed row layout; see pdvm/upg.h)");
  }
  return info;
}

}  // namespace

std::optional<TypeInfo> type_info(uint32_t raw_id) {
  if (const TypeInfo* info = find_info(raw_id)) return *info;
  return std::nullopt;
}

const TypeInfo& type_info(TensorType type) { return info_or_unsupported(type, "tensor type"); }

std::string_view type_name(TensorType type) { return type_info(type).name; }

std::optional<TensorType> type_from_name(std::string_view name) {
  std::array<TypeInfo, kTypes.size() + kLogicalTypes.size()> all{};
  std::copy(kTypes.begin(), kTypes.end(), all.begin());
  std::copy(kLogicalTypes.begin(), kLogicalTypes.end(), all.begin() + kTypes.size());
  for (const TypeInfo& info : all) {
    const std::string_view candidate = info.name;
    if (candidate.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i) {
      same = std::tolower(static_cast<unsigned char>(name[i])) == candidate[i];
    }
    if (same) return info.type;
  }
  return std::nullopt;
}

int64_t type_bytes(TensorType type, int64_t n_elems) {
  const TypeInfo& info = ggml_info_or_unsupported(type, "no row size for tensor type");
  return checked_blocks(info, n_elems) * info.block_bytes;
}

void dequantize_row(TensorType type, const void* src, float* dst, int64_t n) {
  const TypeInfo& info = ggml_info_or_unsupported(type, "no reference dequantization for tensor type");
  const int64_t n_blocks = checked_blocks(info, n);
  reference::dequantize_blocks(type, static_cast<const uint8_t*>(src), dst, n_blocks);
}

void quantize_row(TensorType type, const float* src, void* dst, int64_t n) {
  const TypeInfo& info = ggml_info_or_unsupported(type, "no reference quantization for tensor type");
  if (!info.quantizable) {
    throw Error(ErrorKind::kUnsupported,
                std::string("no reference quantization for tensor type ") + info.name);
  }
  const int64_t n_blocks = checked_blocks(info, n);
  reference::quantize_blocks(type, src, static_cast<uint8_t*>(dst), n_blocks);
}

}  // namespace pdvm

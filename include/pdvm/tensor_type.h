// GGML tensor types: block geometry, names, and the reference (scalar, obviously correct)
// conversions between each type and fp32. Faster kernels live in the backends and are
// tested against these.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pdvm {

// Values are the on-disk GGUF type ids.
enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
  // Logical types outside GGML's range, never stored as a GGUF tensor type: a UPG matrix
  // (pdvm/upg.h) bundled from its component tensors. Its Tensor::data points to a UpgMatrix
  // (or a backend's own form of it); type_bytes throws for them (rows have no fixed size).
  kUpg3 = 1003,
  kUpg4 = 1004,
};

inline bool is_upg_type(TensorType type) { return type == TensorType::kUpg3 || type == TensorType::kUpg4; }

struct TypeInfo {
  TensorType type;
  const char* name;     // lower-case GGML name, e.g. "q4_k"
  int64_t block_elems;  // elements per block (1 for plain types)
  int64_t block_bytes;  // bytes per block
  bool dequantizable;   // reference dequantization exists
  bool quantizable;     // reference quantization (round-to-nearest) exists
};

// Info for a raw on-disk id; std::nullopt for ids this build does not know.
std::optional<TypeInfo> type_info(uint32_t raw_id);
const TypeInfo& type_info(TensorType type);
std::string_view type_name(TensorType type);
// Parses a name such as "q8_0" or "F16" (case-insensitive); nullopt when unknown.
std::optional<TensorType> type_from_name(std::string_view name);

// Bytes for n_elems elements; throws Error(kInvalidArgument) if n_elems is not a whole number of blocks.
int64_t type_bytes(TensorType type, int64_t n_elems);

// Reference conversions. n must be a multiple of the block size. Throw Error(kUnsupported)
// naming the type when no reference exists.
void dequantize_row(TensorType type, const void* src, float* dst, int64_t n);
void quantize_row(TensorType type, const float* src, void* dst, int64_t n);

float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even, handles inf/nan/subnormals
float bf16_to_fp32(uint16_t b);
uint16_t fp32_to_bf16(float f);  // round to nearest even, nan stays nan

}  // namespace pdvm

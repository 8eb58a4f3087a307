// Parses one GGUF image (one file of a possibly split model) with every count, length, shape
// and offset validated against the bytes before use.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "pdvm/gguf.h"

namespace pdvm {

inline constexpr uint64_t kGgufDefaultAlignment = 32;
inline constexpr uint32_t kGgufMaxArrayDepth = 8;
inline constexpr uint32_t kGgufMaxDims = 4;

struct ParsedGguf {
  uint32_t version = 0;
  uint64_t alignment = kGgufDefaultAlignment;
  uint64_t data_offset = 0;  // start of the data section within the image
  std::vector<GgufKeyValue> metadata;
  std::vector<GgufTensor> tensors;  // data points into the image; file_index is 0
};

// source names the image in error messages (usually its path).
ParsedGguf parse_gguf(std::span<const uint8_t> bytes, const std::string& source);

}  // namespace pdvm

// Helpers shared by the GGUF tests: deep value comparison and random metadata/tensor data.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "pdvm/gguf.h"
#include "test_support.h"

namespace pdvm::test {

// Deep equality including the exact GGUF type of every (nested) value.
inline ::testing::AssertionResult same_value(const GgufValue& a, const GgufValue& b) {
  if (a.type() != b.type()) {
    return ::testing::AssertionFailure() << gguf_type_name(a.type()) << " vs " << gguf_type_name(b.type());
  }
  if (a.type() != GgufType::kArray) {
    if (a.storage() == b.storage()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << a.to_display_string() << " vs " << b.to_display_string();
  }
  const GgufArray& x = a.as_array();
  const GgufArray& y = b.as_array();
  if (x.element_type != y.element_type || x.elements.size() != y.elements.size()) {
    return ::testing::AssertionFailure() << "array shape differs: " << a.to_display_string() << " vs "
                                         << b.to_display_string();
  }
  for (size_t i = 0; i < x.elements.size(); ++i) {
    auto result = same_value(x.elements[i], y.elements[i]);
    if (!result) return result << " at element " << i;
  }
  return ::testing::AssertionSuccess();
}

inline std::vector<uint8_t> random_bytes(size_t n) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<uint8_t> out(n);
  for (uint8_t& b : out) b = static_cast<uint8_t>(byte(rng()));
  return out;
}

inline int64_t random_int(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng()); }

// A random value of a scalar or string type.
inline GgufValue random_scalar(GgufType type) {
  switch (type) {
    case GgufType::kU8: return GgufValue(static_cast<uint8_t>(random_int(0, 255)));
    case GgufType::kI8: return GgufValue(static_cast<int8_t>(random_int(-128, 127)));
    case GgufType::kU16: return GgufValue(static_cast<uint16_t>(random_int(0, 65535)));
    case GgufType::kI16: return GgufValue(static_cast<int16_t>(random_int(-32768, 32767)));
    case GgufType::kU32: return GgufValue(static_cast<uint32_t>(rng()()));
    case GgufType::kI32: return GgufValue(static_cast<int32_t>(rng()()));
    case GgufType::kF32: return GgufValue(random_floats(1, 100.0f)[0]);
    case GgufType::kBool: return GgufValue(random_int(0, 1) == 1);
    case GgufType::kU64: return GgufValue(static_cast<uint64_t>(rng()()));
    case GgufType::kI64: return GgufValue(static_cast<int64_t>(rng()()));
    case GgufType::kF64: return GgufValue(std::normal_distribution<double>(0.0, 1e6)(rng()));
    case GgufType::kString: {
      // UTF-8, an embedded NUL and random printable bytes.
      std::string text = "t\xc3\xa9st \xe2\x9c\x93 ";
      text.push_back('\0');
      const int64_t n = random_int(0, 40);
      for (int64_t i = 0; i < n; ++i) text.push_back(static_cast<char>(random_int(32, 126)));
      return GgufValue(std::move(text));
    }
    case GgufType::kArray: break;
  }
  ADD_FAILURE() << "random_scalar of an array";
  return GgufValue();
}

inline const std::vector<GgufType>& scalar_types() {
  static const std::vector<GgufType> types = {
      GgufType::kU8,  GgufType::kI8,  GgufType::kU16,    GgufType::kI16, GgufType::kU32, GgufType::kI32,
      GgufType::kF32, GgufType::kBool, GgufType::kString, GgufType::kU64, GgufType::kI64, GgufType::kF64};
  return types;
}

inline GgufValue random_array(GgufType element_type, size_t max_len) {
  std::vector<GgufValue> elements(static_cast<size_t>(random_int(0, static_cast<int64_t>(max_len))));
  for (GgufValue& element : elements) element = random_scalar(element_type);
  return GgufValue::array(element_type, std::move(elements));
}

}  // namespace pdvm::test

// Writes a seed corpus for gguf_fuzz: small GgufWriter images covering every value type,
// nested arrays, several tensor types and alignments, and split keys.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <random>

#include "pdvm/gguf.h"

namespace {

using pdvm::GgufType;
using pdvm::GgufValue;

GgufValue scalar(GgufType type, std::mt19937_64& rng) {
  const uint64_t bits = rng();
  switch (type) {
    case GgufType::kU8: return GgufValue(static_cast<uint8_t>(bits));
    case GgufType::kI8: return GgufValue(static_cast<int8_t>(bits));
    case GgufType::kU16: return GgufValue(static_cast<uint16_t>(bits));
    case GgufType::kI16: return GgufValue(static_cast<int16_t>(bits));
    case GgufType::kU32: return GgufValue(static_cast<uint32_t>(bits));
    case GgufType::kI32: return GgufValue(static_cast<int32_t>(bits));
    case GgufType::kF32: return GgufValue(static_cast<float>(bits % 10000) / 7.0f);
    case GgufType::kBool: return GgufValue((bits & 1) != 0);
    case GgufType::kU64: return GgufValue(bits);
    case GgufType::kI64: return GgufValue(static_cast<int64_t>(bits));
    case GgufType::kF64: return GgufValue(static_cast<double>(bits % 100000) / 3.0);
    default: return GgufValue(fmt::format("s\xc3\xa9{}", bits % 1000));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::filesystem::create_directories(dir);
  std::mt19937_64 rng(20261125);
  const GgufType types[] = {GgufType::kU8,  GgufType::kI8,   GgufType::kU16,    GgufType::kI16, GgufType::kU32,
                            GgufType::kI32, GgufType::kF32,  GgufType::kBool,   GgufType::kU64, GgufType::kI64,
                            GgufType::kF64, GgufType::kString};
  const pdvm::TensorType tensor_types[] = {pdvm::TensorType::kF32, pdvm::TensorType::kF16, pdvm::TensorType::kQ4_0,
                                           pdvm::TensorType::kQ8_0, pdvm::TensorType::kQ4_K, pdvm::TensorType::kI8};
  const uint64_t alignments[] = {32, 1, 8, 64};
  for (int i = 0; i < 24; ++i) {
    pdvm::GgufWriter writer(alignments[i % 4]);
    writer.set("general.architecture", GgufValue("llama"));
    if (i % 5 == 0) {
      writer.set("split.no", GgufValue(uint16_t{0}));
      writer.set("split.count", GgufValue(uint16_t{1}));
      writer.set("split.tensors.count", GgufValue(int32_t{1}));
    }
    for (int k = 0; k < 4; ++k) {
      const GgufType type = types[rng() % std::size(types)];
      writer.set(fmt::format("k{}.{}", k, pdvm::gguf_type_name(type)), scalar(type, rng));
      std::vector<GgufValue> elements;
      for (uint64_t e = 0; e < rng() % 5; ++e) elements.push_back(scalar(type, rng));
      writer.set(fmt::format("a{}.{}", k, pdvm::gguf_type_name(type)), GgufValue::array(type, elements));
    }
    if (i % 3 == 0) {
      std::vector<GgufValue> inner = {GgufValue::array(GgufType::kI32, {GgufValue(int32_t{7})})};
      writer.set("nested", GgufValue::array(GgufType::kArray, {GgufValue::array(GgufType::kArray, inner)}));
    }
    for (int t = 0; t < i % 4; ++t) {
      const pdvm::TensorType type = tensor_types[rng() % std::size(tensor_types)];
      const int64_t block = pdvm::type_info(type).block_elems;
      writer.add_tensor(fmt::format("blk.{}.w", t), type, {block, 1 + static_cast<int64_t>(rng() % 2)},
                        [&rng](std::span<uint8_t> out) {
                          for (uint8_t& byte : out) byte = static_cast<uint8_t>(rng());
                        });
    }
    writer.write(dir / fmt::format("seed{:02d}.gguf", i));
  }
  return 0;
}

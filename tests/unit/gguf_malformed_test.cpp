// Malformed GGUF images, built byte by byte: each must raise Error(kFileFormat) with a message
// that names what is wrong and where, never crash or read out of bounds.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>

#include "gguf_test_util.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "test_support.h"

namespace pdvm {
namespace {

constexpr uint64_t kHuge = uint64_t{1} << 62;

class Raw {
 public:
  Raw& u8(uint8_t v) { return put(v); }
  Raw& u32(uint32_t v) { return put(v); }
  Raw& u64(uint64_t v) { return put(v); }
  Raw& str(std::string_view text) {
    u64(text.size());
    bytes.insert(bytes.end(), text.begin(), text.end());
    return *this;
  }
  Raw& header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    bytes.insert(bytes.end(), {'G', 'G', 'U', 'F'});
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  Raw& kv_u32(std::string_view key, uint32_t value) { return str(key).u32(4).u32(value); }
  Raw& tensor(std::string_view name, const std::vector<uint64_t>& dims, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(dims.size()));
    for (uint64_t dim : dims) u64(dim);
    return u32(type).u64(offset);
  }
  // Pads to `alignment` and appends n random data bytes.
  Raw& data(uint64_t n, uint64_t alignment = 32) {
    bytes.resize((bytes.size() + alignment - 1) / alignment * alignment, 0);
    const std::vector<uint8_t> payload = test::random_bytes(n);
    bytes.insert(bytes.end(), payload.begin(), payload.end());
    return *this;
  }

  std::vector<uint8_t> bytes;

 private:
  template <typename T>
  Raw& put(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
    return *this;
  }
};

// The message of the kFileFormat error parsing `bytes` raises ("" and a test failure if none).
std::string parse_error(const std::vector<uint8_t>& bytes) {
  try {
    GgufFile::parse(bytes, "bad.gguf");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFileFormat) << e.what();
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
    EXPECT_EQ(message.rfind("bad.gguf: ", 0), 0u) << message;
    return message;
  }
  ADD_FAILURE() << "parsed without error";
  return "";
}

#define EXPECT_PARSE_ERROR(bytes, ...)                                               \
  do {                                                                               \
    const std::string message_ = parse_error(bytes);                                 \
    for (const char* part_ : {__VA_ARGS__}) {                                        \
      EXPECT_NE(message_.find(part_), std::string::npos) << "missing '" << part_ << "' in: " << message_; \
    }                                                                                \
  } while (0)

constexpr uint32_t kF32 = 0;
constexpr uint32_t kQ4_0 = 2;

TEST(GgufMalformed, EveryTruncatedPrefixIsRejected) {
  GgufWriter writer;
  writer.set("general.architecture", GgufValue("llama"));
  writer.set("x.count", GgufValue(uint64_t{7}));
  writer.set("x.list", test::random_array(GgufType::kString, 4));
  writer.set("x.flags", GgufValue::array(GgufType::kBool, {GgufValue(true), GgufValue(false)}));
  const std::vector<uint8_t> a = test::random_bytes(64 * 4);
  const std::vector<uint8_t> b = test::random_bytes(18 * 2);
  writer.add_tensor("a", TensorType::kF32, {16, 4}, a);
  writer.add_tensor("b", TensorType::kQ4_0, {64}, b);
  const std::vector<uint8_t> image = writer.write_to_memory();
  const GgufFile whole = GgufFile::parse(image);
  const GgufTensor& last = whole.tensors().back();
  const size_t needed = whole.data_section_offset() + last.offset + last.n_bytes;
  ASSERT_LT(needed, image.size()) << "the writer pads after the last tensor";
  for (size_t n = 0; n < image.size(); ++n) {
    const std::vector<uint8_t> prefix(image.begin(), image.begin() + static_cast<ptrdiff_t>(n));
    if (n < needed) {
      EXPECT_THROW(GgufFile::parse(prefix), Error) << "prefix of " << n << " bytes";
    } else {
      EXPECT_NO_THROW(GgufFile::parse(prefix)) << "prefix of " << n << " bytes (only padding cut)";
    }
  }
}

TEST(GgufMalformed, RandomCorruptionNeverCrashes) {
  GgufWriter writer;
  writer.set("general.architecture", GgufValue("llama"));
  writer.set("x.nested", GgufValue::array(GgufType::kArray, {test::random_array(GgufType::kU16, 6)}));
  const std::vector<uint8_t> a = test::random_bytes(4 * 32);
  writer.add_tensor("a", TensorType::kF32, {32}, a);
  const std::vector<uint8_t> image = writer.write_to_memory();
  int rejected = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<uint8_t> corrupt = image;
    const int64_t flips = test::random_int(1, 4);
    for (int64_t f = 0; f < flips; ++f) {
      corrupt[static_cast<size_t>(test::random_int(0, static_cast<int64_t>(corrupt.size()) - 1))] =
          static_cast<uint8_t>(test::random_int(0, 255));
    }
    try {
      GgufFile::parse(corrupt);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFileFormat) << e.what();
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST(GgufMalformed, BadMagicAndVersion) {
  Raw magic;
  magic.bytes = {'G', 'G', 'M', 'L', 3, 0, 0, 0};
  EXPECT_PARSE_ERROR(magic.bytes, "magic", "offset 0");
  EXPECT_PARSE_ERROR(Raw().header(1, 0, 0).bytes, "version 1 is not supported", "offset 4");
  EXPECT_PARSE_ERROR(Raw().header(4, 0, 0).bytes, "unsupported GGUF version 4");
  EXPECT_PARSE_ERROR(Raw().header(0x03000000, 0, 0).bytes, "big-endian");
  EXPECT_PARSE_ERROR(std::vector<uint8_t>{}, "truncated", "magic");
  // Minimal valid files, v2 and v3.
  EXPECT_EQ(GgufFile::parse(Raw().header(2, 0, 0).bytes).version(), 2u);
  EXPECT_EQ(GgufFile::parse(Raw().header(3, 0, 0).bytes).version(), 3u);
}

TEST(GgufMalformed, HugeCounts) {
  EXPECT_PARSE_ERROR(Raw().header(3, kHuge, 0).bytes, "tensor count 4611686018427387904", "offset 8");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, kHuge).bytes, "metadata key count", "offset 16");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).u64(kHuge).u32(4).u32(0).bytes, "metadata key length", "offset 24");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).str("k.str").u32(8).u64(kHuge).bytes, "key 'k.str'", "string length");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).str("k.arr").u32(9).u32(4).u64(kHuge).bytes, "key 'k.arr'",
                     "array length 4611686018427387904");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).str("k.arr").u32(9).u32(8).u64(kHuge).bytes, "array length");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).u64(kHuge).u32(1).u64(1).u32(0).u64(0).bytes, "tensor name length");
}

TEST(GgufMalformed, BadMetadataValues) {
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).str("k.t").u32(13).u32(0).bytes, "key 'k.t'", "unknown value type 13");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).str("k.b").u32(7).u8(2).bytes, "bool value 2");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 2).kv_u32("k.dup", 1).kv_u32("k.dup", 2).bytes, "duplicate", "'k.dup'",
                     "offset 45");  // 24-byte header + the first 21-byte entry
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).str("").u32(4).u32(0).bytes, "empty metadata key");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).str("k.arr").u32(9).u32(13).u64(0).bytes, "array element type 13");
  Raw nested;
  nested.header(3, 0, 1).str("k.deep").u32(9);
  for (int level = 0; level < 9; ++level) nested.u32(9).u64(1);
  nested.u32(4).u64(0);
  EXPECT_PARSE_ERROR(nested.bytes, "key 'k.deep'", "nested deeper than 8");
  Raw ok_nested;
  ok_nested.header(3, 0, 1).str("k.deep").u32(9);
  for (int level = 0; level < 7; ++level) ok_nested.u32(9).u64(1);
  ok_nested.u32(4).u64(1).u32(42);
  const GgufFile file = GgufFile::parse(ok_nested.bytes);
  const GgufValue* value = file.find("k.deep");
  for (int level = 0; level < 8; ++level) value = &value->as_array().elements.at(0);
  EXPECT_EQ(value->as_uint(), 42u);
}

TEST(GgufMalformed, BadAlignment) {
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).kv_u32("general.alignment", 0).bytes, "general.alignment 0",
                     "power of two");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).kv_u32("general.alignment", 3).bytes, "general.alignment 3");
  EXPECT_PARSE_ERROR(Raw().header(3, 0, 1).str("general.alignment").u32(8).str("32").bytes, "must be an integer");
  // A valid non-default alignment moves the data section.
  Raw aligned;
  aligned.header(3, 1, 1).kv_u32("general.alignment", 64).tensor("t", {16}, kF32, 0).data(64, 64);
  const GgufFile file = GgufFile::parse(aligned.bytes);
  EXPECT_EQ(file.alignment(), 64u);
  EXPECT_EQ(file.data_section_offset(), 128u);
  EXPECT_EQ(file.tensors()[0].data, aligned.bytes.data() + 128);
}

TEST(GgufMalformed, BadTensorShapes) {
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("w0", {}, kF32, 0).u64(0).data(64).bytes, "tensor 'w0'",
                     "n_dims 0");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("w5", {1, 1, 1, 1, 1}, kF32, 0).data(64).bytes, "tensor 'w5'",
                     "n_dims 5");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("wz", {4, 0}, kF32, 0).data(64).bytes, "tensor 'wz'",
                     "dimension 1 is 0");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("wo", {1ull << 32, 1ull << 32, 1ull << 32}, kF32, 0).data(64).bytes,
                     "tensor 'wo'", "overflows");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("wn", {1ull << 63}, kF32, 0).data(64).bytes, "overflows");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("wb", {1ull << 62}, kF32, 0).data(64).bytes, "tensor 'wb'",
                     "byte size");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("wt", {32}, 99, 0).data(128).bytes, "tensor 'wt'",
                     "unknown tensor type id 99");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("wq", {48}, kQ4_0, 0).data(128).bytes, "tensor 'wq'",
                     "row length 48", "block size 32");
}

TEST(GgufMalformed, BadTensorPlacement) {
  // header (24) + name "t" (9) + n_dims (4) + dim (8) + type (4) + offset (8) = 57 -> data at 64.
  EXPECT_EQ(GgufFile::parse(Raw().header(3, 1, 0).tensor("t", {16}, kF32, 0).data(64).bytes).data_section_offset(),
            64u);
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("t.far", {16}, kF32, 64).data(64).bytes, "tensor 't.far'",
                     "outside", "offset 24");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("t.short", {16}, kF32, 0).data(63).bytes, "tensor 't.short'",
                     "outside");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("t.wrap", {16}, kF32, ~uint64_t{31}).data(64).bytes, "outside");
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("t.odd", {4}, kF32, 16).data(64).bytes, "tensor 't.odd'",
                     "data offset 16 is not a multiple of the alignment 32");
  EXPECT_PARSE_ERROR(
      Raw().header(3, 2, 0).tensor("t.one", {16}, kF32, 0).tensor("t.one", {16}, kF32, 64).data(128).bytes,
      "duplicate tensor name 't.one'");
  EXPECT_PARSE_ERROR(
      Raw().header(3, 2, 0).tensor("t.a", {16}, kF32, 0).tensor("t.b", {16}, kF32, 32).data(128).bytes, "overlaps",
      "'t.a'", "'t.b'");
  // Missing data section entirely (file ends after the tensor infos).
  EXPECT_PARSE_ERROR(Raw().header(3, 1, 0).tensor("t.none", {16}, kF32, 0).bytes, "tensor 't.none'", "outside");
}

}  // namespace
}  // namespace pdvm

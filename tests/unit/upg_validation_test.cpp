// UPG matrices read from GGUF images: a valid one reads back exactly; every corrupted field is
// an Error(kFileFormat) naming the tensor; random byte damage never crashes the reader.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "pdvm/error.h"
#include "pdvm/upg.h"
#include "test_support.h"

namespace pdvm {
namespace {

template <typename T>
std::span<const uint8_t> bytes_of(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

// The components of one matrix as the test writes them, open to corruption before writing.
struct Image {
  UpgEncoded e;
  uint32_t version = kUpgVersion;
  int64_t cap = 0;
  std::string drop;              // component left out
  TensorType codes_type = TensorType::kI8;
  int64_t lut_entries = 0;       // 0: the real count
  std::vector<uint8_t> bytes;

  void write() {
    GgufWriter writer;
    writer.set("upg.version", GgufValue(version));
    writer.set("upg.outlier_cap", GgufValue(static_cast<uint32_t>(cap)));
    const std::string w = "blk.0.ffn_up.weight";
    const int64_t levels = int64_t{1} << e.bits, n = e.n;
    auto add = [&](const char* c, TensorType type, std::vector<int64_t> shape, std::span<const uint8_t> data) {
      if (drop != c) writer.add_tensor(upg_component_name(w, c), type, std::move(shape), data);
    };
    add("codes", codes_type, {e.k * e.bits / 8 / (codes_type == TensorType::kI8 ? 1 : 4), n}, bytes_of(e.codes));
    add("bscale", TensorType::kI8, {e.k / e.block, n}, bytes_of(e.bscale));
    const int64_t entries = lut_entries ? lut_entries : levels;
    add("lut", TensorType::kI8, {entries, n * levels / entries}, bytes_of(e.lut));
    add("rscale", TensorType::kF32, {n}, bytes_of(e.rscale));
    if (!e.sp_val.empty()) {
      add("sp_rowptr", TensorType::kI32, {n + 1}, bytes_of(e.sp_rowptr));
      add("sp_idx", TensorType::kI16, {static_cast<int64_t>(e.sp_idx16.size())}, bytes_of(e.sp_idx16));
      add("sp_val", TensorType::kF16, {static_cast<int64_t>(e.sp_val.size())}, bytes_of(e.sp_val));
    }
    bytes = writer.write_to_memory();
  }
};

Image valid_image() {
  const int64_t k = 128, n = 6;
  const std::vector<float> w = test::random_floats(static_cast<size_t>(k * n), 0.02f);
  Image image;
  image.e = upg_encode(w.data(), k, n, nullptr, {4, 32, 0.03}, 1);
  image.cap = image.e.outlier_cap();
  return image;
}

void expect_format_error(Image image, const std::string& fragment) {
  image.write();
  const GgufFile file = GgufFile::parse(image.bytes);
  try {
    upg_matrix(file, "blk.0.ffn_up.weight");
    ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFileFormat) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("blk.0.ffn_up.weight"), std::string::npos) << e.what();
  }
}

TEST(UpgValidation, ValidMatrixReadsBackExactly) {
  Image image = valid_image();
  image.write();
  const GgufFile file = GgufFile::parse(image.bytes);
  EXPECT_TRUE(has_upg_weight(file, "blk.0.ffn_up.weight"));
  EXPECT_EQ(weight_shape(file, "blk.0.ffn_up.weight"), (std::vector<int64_t>{128, 6}));
  const UpgMatrix m = upg_matrix(file, "blk.0.ffn_up.weight");
  const UpgMatrix expected = image.e.view();
  EXPECT_EQ(m.bits, 4);
  EXPECT_EQ(m.block, 32);
  EXPECT_EQ(m.nnz, expected.nnz);
  std::vector<float> a(128), b(128);
  for (int64_t r = 0; r < m.n; ++r) {
    upg_dequantize_row(m, r, a.data());
    upg_dequantize_row(expected, r, b.data());
    EXPECT_EQ(a, b);
  }
}

TEST(UpgValidation, EveryCorruptedFieldIsAnError) {
  {
    Image i = valid_image();
    i.version = 2;
    expect_format_error(i, "upg.version");
  }
  for (const char* component : {"codes", "bscale", "rscale"}) {
    Image i = valid_image();
    i.drop = component;
    expect_format_error(i, "codes, bscale, lut and rscale");
  }
  {
    Image i = valid_image();
    i.drop = "sp_idx";
    expect_format_error(i, "no sp_idx");
  }
  {
    Image i = valid_image();
    i.drop = "sp_rowptr";
    expect_format_error(i, "no sp_rowptr");
  }
  {
    Image i = valid_image();
    i.codes_type = TensorType::kF32;
    expect_format_error(i, "type");
  }
  {
    Image i = valid_image();
    i.lut_entries = 4;
    expect_format_error(i, "entries per row");
  }
  {
    Image i = valid_image();
    i.e.rscale[2] = std::numeric_limits<float>::quiet_NaN();
    expect_format_error(i, "rscale of row 2");
  }
  {
    Image i = valid_image();
    i.e.sp_rowptr[3] = i.e.sp_rowptr[2] - 1;
    expect_format_error(i, "monotonic");
  }
  {
    Image i = valid_image();
    i.e.sp_rowptr.back() -= 1;
    expect_format_error(i, "sp_rowptr ends");
  }
  {
    Image i = valid_image();
    i.cap -= 1;
    expect_format_error(i, "upg.outlier_cap");
  }
  {
    Image i = valid_image();
    i.e.sp_idx16[1] = 128;
    expect_format_error(i, "outside the row");
  }
  {
    Image i = valid_image();
    i.e.sp_idx16[1] = i.e.sp_idx16[0];
    expect_format_error(i, "not increasing");
  }
  {
    Image i = valid_image();
    i.e.sp_val[0] = 0x7C00;  // f16 infinity
    expect_format_error(i, "not finite");
  }
}

// Random byte damage anywhere in the image: reading and decoding either works or throws
// pdvm::Error; out-of-bounds reads would show under the sanitizer build.
TEST(UpgValidation, RandomDamageNeverCrashes) {
  Image image = valid_image();
  image.write();
  std::uniform_int_distribution<size_t> pos(0, image.bytes.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  int errors = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<uint8_t> damaged = image.bytes;
    for (int d = 0; d < 1 + trial % 4; ++d) damaged[pos(test::rng())] = static_cast<uint8_t>(byte(test::rng()));
    try {
      const GgufFile file = GgufFile::parse(damaged);
      const UpgMatrix m = upg_matrix(file, "blk.0.ffn_up.weight");
      std::vector<float> row(static_cast<size_t>(m.k));
      for (int64_t r = 0; r < m.n; ++r) upg_dequantize_row(m, r, row.data());
    } catch (const Error&) {
      ++errors;
    }
  }
  std::printf("%d of 400 damaged images rejected\n", errors);
  EXPECT_GT(errors, 0);
}

}  // namespace
}  // namespace pdvm

// Reference tensor-type conversions against the gguf Python package (an independent
// implementation of the GGML formats), plus direct checks of fp16/bf16, sizes and errors.
#include "pdvm/tensor_type.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "pdvm/error.h"
#include "test_support.h"

namespace pdvm {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing test vector " << path;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<float> read_floats(const fs::path& path) {
  const std::vector<uint8_t> bytes = read_bytes(path);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

// Vectors written once per run by tests/python/gen_quant_vectors.py with a fresh seed.
class GgufVectors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const uint64_t seed = test::rng()() % 1000000007u;
    dir_ = fs::temp_directory_path() / ("pdvm_quant_vectors_" + std::to_string(getpid()) + "_" + std::to_string(seed));
    const std::string command = "python3 " + (test::source_dir() / "tests/python/gen_quant_vectors.py").string() +
                                " " + dir_.string() + " " + std::to_string(seed);
    std::fprintf(stderr, "[pdvm test] %s\n", command.c_str());
    generated_ = std::system(command.c_str()) == 0;
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  void SetUp() override { ASSERT_TRUE(generated_) << "gen_quant_vectors.py failed"; }

  static inline fs::path dir_;
  static inline bool generated_ = false;
};

bool same_float(float a, float b) {
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b) || (std::isnan(a) && std::isnan(b));
}

TEST_F(GgufVectors, DequantizeMatchesBitwise) {
  // Bitwise: every dequantizer multiplies in GGML's order, as the gguf package does.
  for (const char* name : {"f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "q2_k",
                           "q3_k", "q4_k", "q5_k", "q6_k", "q8_k", "i8", "i16", "i32", "i64", "f64"}) {
    SCOPED_TRACE(name);
    const TensorType type = *type_from_name(name);
    const std::vector<uint8_t> blocks = read_bytes(dir_ / (std::string(name) + ".blocks"));
    const std::vector<float> expected = read_floats(dir_ / (std::string(name) + ".dequant"));
    ASSERT_FALSE(expected.empty());
    const auto n = static_cast<int64_t>(expected.size());
    ASSERT_EQ(type_bytes(type, n), static_cast<int64_t>(blocks.size()));
    std::vector<float> got(expected.size(), -1.0f);
    dequantize_row(type, blocks.data(), got.data(), n);
    int mismatches = 0;
    for (size_t i = 0; i < expected.size() && mismatches < 5; ++i) {
      if (!same_float(got[i], expected[i])) {
        ++mismatches;
        ADD_FAILURE() << name << " element " << i << ": got " << got[i] << " expected " << expected[i];
      }
    }
  }
}

// The one documented difference: for a q4_0/q5_0 block of only zeros, GGML's scale search starts
// from +0 and yields d = +0 / -8 = -0, while the gguf package takes the first element, so a block of
// -0 gives it d = +0. We follow GGML; the quants agree, only the sign bit of the zero scale differs.
bool zero_scale_sign_differs(TensorType type, const float* block_input, uint8_t got, uint8_t expected,
                             size_t byte_in_block) {
  if (type != TensorType::kQ4_0 && type != TensorType::kQ5_0) return false;
  for (int j = 0; j < 32; ++j) {
    if (block_input[j] != 0.0f) return false;
  }
  return byte_in_block == 1 && (got ^ expected) == 0x80;
}

TEST_F(GgufVectors, QuantizeMatchesByteExactly) {
  for (const char* name : {"f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1"}) {
    SCOPED_TRACE(name);
    const TensorType type = *type_from_name(name);
    const std::vector<float> input = read_floats(dir_ / (std::string(name) + ".input"));
    const std::vector<uint8_t> expected = read_bytes(dir_ / (std::string(name) + ".quant"));
    const auto n = static_cast<int64_t>(input.size());
    ASSERT_EQ(type_bytes(type, n), static_cast<int64_t>(expected.size()));
    std::vector<uint8_t> got(expected.size(), 0xAB);
    quantize_row(type, input.data(), got.data(), n);
    const int64_t block_bytes = type_info(type).block_bytes;
    const int64_t block_elems = type_info(type).block_elems;
    int mismatches = 0;
    for (size_t i = 0; i < got.size() && mismatches < 5; ++i) {
      const int64_t block = static_cast<int64_t>(i) / block_bytes;
      if (got[i] != expected[i] &&
          !zero_scale_sign_differs(type, input.data() + block * block_elems, got[i], expected[i], i % block_bytes)) {
        ++mismatches;
        ADD_FAILURE() << name << " byte " << i << " (block " << i / block_bytes << "): got " << int(got[i])
                      << " expected " << int(expected[i]);
      }
    }
  }
}

TEST(Fp16, EdgeCases) {
  EXPECT_EQ(fp32_to_fp16(0.0f), 0x0000);
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(fp32_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65519.99f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);  // tie rounds to even: infinity
  EXPECT_EQ(fp32_to_fp16(-1e10f), 0xfc00);
  EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even: zero
  EXPECT_EQ(fp32_to_fp16(std::ldexp(3.0f, -26)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp ties to 2
  EXPECT_EQ(fp32_to_fp16(-std::ldexp(5.0f, -25)), 0x8002);  // 2.5 ulp ties to 2
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -149)), 0x0000);  // fp32 subnormal
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);        // tie to even (down)
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);        // tie to even (up)
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1023.0f, -24) + std::ldexp(1.0f, -25)), 0x0400);  // carries into normal
  const uint16_t nan16 = fp32_to_fp16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(fp16_to_fp32(nan16)));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(std::bit_cast<float>(0x7f800001u)))));  // payload lost below fp16
  EXPECT_EQ(std::bit_cast<uint32_t>(fp16_to_fp32(0x8000)), 0x80000000u);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0xfbff), -65504.0f);
  EXPECT_EQ(fp16_to_fp32(0xfc00), -std::numeric_limits<float>::infinity());
}

TEST(Fp16, EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(f)))) << h;
    } else {
      ASSERT_EQ(fp32_to_fp16(f), h) << "fp16 0x" << std::hex << h;
    }
  }
}

TEST(Fp16, RandomFloatsRoundToNearest) {
  std::uniform_int_distribution<uint32_t> bits(0, 0x477fefffu);  // |x| below the overflow threshold
  for (int i = 0; i < 200000; ++i) {
    const float f = std::bit_cast<float>(bits(test::rng()));
    const uint16_t h = fp32_to_fp16(f);
    const double error = std::fabs(double(f) - double(fp16_to_fp32(h)));
    // Neither neighbour on the fp16 grid is strictly closer (ties were checked above).
    for (int step : {-1, 1}) {
      const int neighbour = int(h & 0x7fff) + step;
      if (neighbour < 0 || neighbour > 0x7bff) continue;
      const double other = std::fabs(double(f) - double(fp16_to_fp32(static_cast<uint16_t>(neighbour))));
      ASSERT_LE(error, other) << "fp32 0x" << std::hex << std::bit_cast<uint32_t>(f);
    }
  }
}

TEST(Bf16, RoundingAndSpecials) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie to even (down)
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie to even (up)
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  EXPECT_EQ(fp32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x7f7fffffu)), 0x7f80);  // max float rounds up to inf
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(std::bit_cast<float>(0x7f800001u)))));
  EXPECT_EQ(bf16_to_fp32(0xc040), -3.0f);
}

TEST(TensorTypeTable, SizesAndNames) {
  EXPECT_EQ(type_bytes(TensorType::kQ4_0, 64), 36);
  EXPECT_EQ(type_bytes(TensorType::kQ6_K, 512), 420);
  EXPECT_EQ(type_bytes(TensorType::kF16, 3), 6);
  EXPECT_EQ(type_bytes(TensorType::kQ8_K, 0), 0);
  EXPECT_EQ(type_info(TensorType::kQ3_K).block_bytes, 110);
  EXPECT_EQ(type_name(TensorType::kBF16), "bf16");
  EXPECT_EQ(type_from_name("Q8_0"), TensorType::kQ8_0);
  EXPECT_EQ(type_from_name("q4_k"), TensorType::kQ4_K);
  EXPECT_FALSE(type_from_name("q9_0").has_value());
  EXPECT_FALSE(type_from_name("").has_value());
  for (uint32_t unknown : {4u, 5u, 16u, 29u, 31u, 1000u}) EXPECT_FALSE(type_info(unknown).has_value()) << unknown;
  ASSERT_TRUE(type_info(12u).has_value());
  EXPECT_EQ(type_info(12u)->type, TensorType::kQ4_K);
}

template <typename Fn>
void expect_error(Fn fn, ErrorKind kind, const std::vector<std::string>& fragments) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const std::string& fragment : fragments) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what() << " lacks " << fragment;
    }
  }
}

TEST(TensorTypeTable, Errors) {
  expect_error([] { type_bytes(TensorType::kQ4_0, 33); }, ErrorKind::kInvalidArgument, {"q4_0", "33"});
  expect_error([] { type_bytes(TensorType::kQ6_K, -256); }, ErrorKind::kInvalidArgument, {"q6_k", "-256"});
  const auto unknown = static_cast<TensorType>(16);
  float out[32];
  uint8_t bytes[64] = {};
  expect_error([&] { dequantize_row(unknown, bytes, out, 32); }, ErrorKind::kUnsupported, {"16"});
  expect_error([&] { type_bytes(unknown, 32); }, ErrorKind::kUnsupported, {"16"});
  expect_error([&] { quantize_row(TensorType::kQ3_K, out, bytes, 256); }, ErrorKind::kUnsupported, {"q3_k"});
  expect_error([&] { quantize_row(TensorType::kI32, out, bytes, 4); }, ErrorKind::kUnsupported, {"i32"});
  expect_error([&] { dequantize_row(TensorType::kQ8_0, bytes, out, 31); }, ErrorKind::kInvalidArgument, {"q8_0"});
}

// Worst-case absolute error of one block after a quantize/dequantize round trip: half a step
// (a full step where the symmetric types clamp the extreme of the opposite sign), plus the fp16
// rounding of the stored scale and min.
double error_bound(TensorType type, const float* x, int64_t n) {
  double amax = 0, min = x[0], max = x[0];
  for (int64_t i = 0; i < n; ++i) {
    amax = std::max(amax, std::fabs(double(x[i])));
    min = std::min(min, double(x[i]));
    max = std::max(max, double(x[i]));
  }
  const double fp16_rel = std::ldexp(1.0, -10);
  switch (type) {
    case TensorType::kQ4_0: return amax / 8 + amax * fp16_rel;
    case TensorType::kQ5_0: return amax / 16 + amax * fp16_rel;
    case TensorType::kQ8_0:
    case TensorType::kQ8_1: return amax / 127 / 2 + amax * fp16_rel;
    case TensorType::kQ4_1: return (max - min) / 15 / 2 + (max - min + std::fabs(min)) * fp16_rel;
    case TensorType::kQ5_1: return (max - min) / 31 / 2 + (max - min + std::fabs(min)) * fp16_rel;
    default: return 0;
  }
}

TEST(RoundTrip, ErrorWithinTypeBounds) {
  for (TensorType type : {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ4_0, TensorType::kQ4_1,
                          TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kQ8_0, TensorType::kQ8_1}) {
    SCOPED_TRACE(std::string(type_name(type)));
    const int64_t n = 32 * 256;
    const std::vector<float> x = test::random_floats(n, 0.02f);
    std::vector<uint8_t> q(type_bytes(type, n));
    std::vector<float> y(n);
    quantize_row(type, x.data(), q.data(), n);
    dequantize_row(type, q.data(), y.data(), n);
    double sum_sq_err = 0, sum_sq = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double err = std::fabs(double(x[i]) - double(y[i]));
      sum_sq_err += err * err;
      sum_sq += double(x[i]) * x[i];
      double bound;
      if (type == TensorType::kF32) bound = 0;
      else if (type == TensorType::kF16) bound = std::fabs(x[i]) * std::ldexp(1.0, -11) + std::ldexp(1.0, -25);
      else if (type == TensorType::kBF16) bound = std::fabs(x[i]) * std::ldexp(1.0, -8);
      else bound = error_bound(type, x.data() + i / 32 * 32, 32) * (1 + 1e-6);
      ASSERT_LE(err, bound) << "element " << i << " x=" << x[i] << " y=" << y[i];
    }
    const double relative_rms = std::sqrt(sum_sq_err / sum_sq);
    std::fprintf(stderr, "[pdvm test] %s relative rms error %.5f\n", std::string(type_name(type)).c_str(), relative_rms);
  }
}

// Q4_K/Q5_K/Q6_K search their scales, so there is no simple per-element bound; their bytes are
// checked against llama.cpp in tests/python/test_quant_vs_llama_cpp.py. Here: the error is that of
// a 4.5-, 5.5- and 6.5-bit format, and zero blocks stay zero.
TEST(RoundTrip, KQuantErrorIsThatOfTheirBitWidth) {
  for (const auto& [type, max_relative_rms] : {std::pair{TensorType::kQ4_K, 0.10}, std::pair{TensorType::kQ5_K, 0.05},
                                               std::pair{TensorType::kQ6_K, 0.025}}) {
    SCOPED_TRACE(std::string(type_name(type)));
    const int64_t n = 256 * 64;
    std::vector<float> x = test::random_floats(n, 0.02f);
    std::fill(x.begin(), x.begin() + 256, 0.0f);
    std::vector<uint8_t> q(type_bytes(type, n));
    std::vector<float> y(n);
    quantize_row(type, x.data(), q.data(), n);
    dequantize_row(type, q.data(), y.data(), n);
    double sum_sq_err = 0, sum_sq = 0;
    for (int64_t i = 0; i < n; ++i) {
      sum_sq_err += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      sum_sq += double(x[i]) * x[i];
      if (i < 256) {
        ASSERT_EQ(y[i], 0.0f) << i;
      }
    }
    const double relative_rms = std::sqrt(sum_sq_err / sum_sq);
    std::fprintf(stderr, "[pdvm test] %s relative rms error %.5f\n", std::string(type_name(type)).c_str(), relative_rms);
    EXPECT_LT(relative_rms, max_relative_rms);
    EXPECT_GT(relative_rms, max_relative_rms / 10);  // a real quantization happened
  }
}

}  // namespace
}  // namespace pdvm

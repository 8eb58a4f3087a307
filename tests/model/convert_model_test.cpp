// The default model converted to f16 and then to q8_0: every tensor stays within the error of
// the types it went through, relative to the reference dequantization of the original.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>

#include "format/gguf_convert.h"
#include "pdvm/gguf.h"
#include "test_support.h"

namespace pdvm {
namespace {

namespace fs = std::filesystem;

TEST(ConvertDefaultModel, F16ThenQ8_0StaysWithinTypeErrorBounds) {
  if (!test::require_default_model()) GTEST_SKIP() << "default model not present";
  const fs::path dir = fs::temp_directory_path() / ("pdvm_convert_model_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const GgufFile original = GgufFile::open(test::default_model_path());
  convert_gguf(original, dir / "f16.gguf", TensorType::kF16, 2);
  const GgufFile f16 = GgufFile::open(dir / "f16.gguf");
  convert_gguf(f16, dir / "q8_0.gguf", TensorType::kQ8_0, 2);
  const GgufFile q8 = GgufFile::open(dir / "q8_0.gguf");
  EXPECT_EQ(q8.get_int_required("general.file_type"), 7);
  EXPECT_EQ(q8.get_string_required("tokenizer.chat_template"), original.get_string_required("tokenizer.chat_template"));
  ASSERT_EQ(q8.tensors().size(), original.tensors().size());
  for (const GgufTensor& source : original.tensors()) {
    SCOPED_TRACE(source.name);
    const std::vector<float> x = test::dequantized(source);
    const std::vector<float> via_f16 = test::dequantized(f16.tensor_required(source.name));
    const GgufTensor& final_tensor = q8.tensor_required(source.name);
    const std::vector<float> y = test::dequantized(final_tensor);
    ASSERT_EQ(final_tensor.type, source.shape.size() == 1 ? TensorType::kF32 : TensorType::kQ8_0);
    for (size_t block = 0; block < x.size() / 32; ++block) {
      double amax = 0;
      for (size_t i = block * 32; i < block * 32 + 32; ++i) amax = std::max(amax, std::fabs(double(via_f16[i])));
      for (size_t i = block * 32; i < block * 32 + 32; ++i) {
        // f16: half an ulp (relative 2^-11, absolute 2^-25 for subnormals); q8_0: half a step of
        // amax/127 plus the fp16 rounding of its scale.
        const double f16_error = std::fabs(x[i]) * std::ldexp(1.0, -11) + std::ldexp(1.0, -25);
        const double q8_error = final_tensor.type == TensorType::kF32 ? 0 : amax / 254 + amax * std::ldexp(1.0, -10);
        ASSERT_LE(std::fabs(double(y[i]) - x[i]), (f16_error + q8_error) * 1.0001 + 1e-12) << "element " << i;
      }
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pdvm

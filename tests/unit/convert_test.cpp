// `pdvm convert` library: a synthetic model converted to each target type reads back as the
// reference round trip of its tensors, with metadata kept and general.file_type updated.
#include "format/gguf_convert.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>

#include "model/synth_model.h"
#include "pdvm/error.h"
#include "test_support.h"

namespace pdvm {
namespace {

namespace fs = std::filesystem;

class ConvertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pdvm_convert_test_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(ConvertTest, EveryTargetTypeMatchesTheReferenceRoundTrip) {
  const synth::ModelPlan plan = synth::plan_model(synth::shape_by_name("tiny"), TensorType::kF32, test::rng()());
  synth::write_model(plan, dir_ / "in.gguf", 2);
  const GgufFile in = GgufFile::open(dir_ / "in.gguf");
  for (TensorType target : {TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0,
                            TensorType::kQ4_1, TensorType::kQ5_0, TensorType::kQ5_1, TensorType::kF32}) {
    SCOPED_TRACE(std::string(type_name(target)));
    const fs::path out_path = dir_ / (std::string(type_name(target)) + ".gguf");
    convert_gguf(in, out_path, target, 3);
    EXPECT_FALSE(fs::exists(out_path.string() + ".tmp"));
    const GgufFile out = GgufFile::open(out_path);
    EXPECT_EQ(out.get_int_required("general.file_type"), llama_file_type(target));
    EXPECT_EQ(out.metadata().size(), in.metadata().size());
    EXPECT_EQ(out.find("tokenizer.ggml.merges")->as_array().elements.size(),
              in.find("tokenizer.ggml.merges")->as_array().elements.size());
    ASSERT_EQ(out.tensors().size(), in.tensors().size());
    for (const GgufTensor& source : in.tensors()) {
      const GgufTensor& converted = out.tensor_required(source.name);
      EXPECT_EQ(converted.shape, source.shape);
      EXPECT_EQ(converted.type, source.shape.size() == 1 ? TensorType::kF32 : target) << source.name;
      // Independent of convert's row loop: quantize the whole tensor at once, then compare bytes.
      const std::vector<float> values = test::dequantized(source);
      std::vector<uint8_t> expected(static_cast<size_t>(type_bytes(converted.type, source.n_elems())));
      quantize_row(converted.type, values.data(), expected.data(), source.n_elems());
      ASSERT_EQ(std::vector<uint8_t>(converted.data, converted.data + converted.n_bytes), expected) << source.name;
    }
  }
}

TEST_F(ConvertTest, RejectsTypesThatAreNoModelFileType) {
  const synth::ModelPlan plan = synth::plan_model(synth::shape_by_name("tiny"), TensorType::kQ8_0, 1);
  synth::write_model(plan, dir_ / "in.gguf", 1);
  const GgufFile in = GgufFile::open(dir_ / "in.gguf");
  EXPECT_THROW(convert_gguf(in, dir_ / "out.gguf", TensorType::kQ3_K, 1), Error);
  EXPECT_THROW(convert_gguf(in, dir_ / "out.gguf", TensorType::kQ8_1, 1), Error);
  EXPECT_FALSE(fs::exists(dir_ / "out.gguf"));
}

}  // namespace
}  // namespace pdvm

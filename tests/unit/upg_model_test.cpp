// Whole models in UPG: `convert --type upg4|upg3` of a synthetic model, loaded by the model
// through the UPG path, gives the same logits as an F32 model written from the reference
// decompressor's rows (an independent load path), and the fast CPU backend decodes the same
// greedy tokens as the reference one (up to a near-tie).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "greedy_near_tie.h"
#include "model/synth_model.h"
#include "pdvm/engine.h"
#include "pdvm/upg.h"
#include "test_support.h"
#include "upg/upg_convert.h"

namespace pdvm {
namespace {

namespace fs = std::filesystem;

class UpgModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pdvm_upg_model_test_" + std::to_string(getpid()));
    fs::create_directories(dir_);
    const synth::ModelPlan plan = synth::plan_model(synth::shape_by_name("tiny"), TensorType::kF32, test::rng()());
    synth::write_model(plan, dir_ / "in.gguf", 2);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The UPG model with every matrix decompressed to F32 by upg_dequantize_row.
  fs::path decompressed(const fs::path& upg_path) {
    const GgufFile upg = GgufFile::open(upg_path);
    const GgufFile in = GgufFile::open(dir_ / "in.gguf");
    GgufWriter writer;
    for (const GgufKeyValue& kv : upg.metadata()) writer.set(kv.key, kv.value);
    for (const GgufTensor& t : in.tensors()) {
      std::vector<float> values(static_cast<size_t>(t.n_elems()));
      if (has_upg_weight(upg, t.name)) {
        const UpgMatrix m = upg_matrix(upg, t.name);
        for (int64_t r = 0; r < m.n; ++r) upg_dequantize_row(m, r, values.data() + r * m.k);
      } else {
        dequantize_row(TensorType::kF32, upg.tensor_required(t.name).data, values.data(), t.n_elems());
      }
      writer.add_tensor(t.name, TensorType::kF32, t.shape, [values](std::span<uint8_t> out) {
        std::memcpy(out.data(), values.data(), out.size());
      });
    }
    const fs::path out = upg_path.string() + ".f32.gguf";
    writer.write(out);
    return out;
  }

  fs::path dir_;
};

// The fast backend multiplies UPG codes by int16-rounded activations, the reference in double:
// logits within this of the largest; greedy tokens the same up to a near-tie of twice this (a
// synthetic model's random weights meet one now and then).
constexpr float kLogitsTolerance = 1e-4f;

SessionOptions session_options(const fs::path& model, const std::string& backend) {
  SessionOptions o;
  o.model_path = model;
  o.backend = backend;
  o.n_ctx = 64;
  o.kv_type = TensorType::kF32;
  return o;
}

TEST_F(UpgModelTest, ConvertedModelRunsLikeItsDecompressedWeights) {
  for (int bits : {4, 3}) {
    SCOPED_TRACE("upg" + std::to_string(bits));
    UpgConvertOptions options;
    options.bits = bits;
    options.threads = 2;
    const fs::path path = dir_ / ("upg" + std::to_string(bits) + ".gguf");
    convert_gguf_upg(GgufFile::open(dir_ / "in.gguf"), path, options);
    EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
    const GgufFile file = GgufFile::open(path);
    EXPECT_EQ(file.get_int_required("upg.version"), 1);
    EXPECT_EQ(file.get_int_required("upg.bits"), bits);
    EXPECT_NE(file.get_string_required("upg.calibration").find("built-in text"), std::string::npos);
    EXPECT_EQ(upg_matrix(file, "blk.0.ffn_up.weight").bits, bits);
    EXPECT_EQ(upg_matrix(file, "token_embd.weight").bits, 4);  // embedding keeps 4 bits

    Session upg(session_options(path, "cpu-ref"));
    Session dense(session_options(decompressed(path), "cpu-ref"));
    const std::vector<int32_t> prompt = {1, 5, 9, 2, 7, 3};
    const auto upg_logits = upg.prefill_all(prompt);
    const std::vector<float> a(upg_logits.begin(), upg_logits.end());
    const auto b = dense.prefill_all(prompt);
    ASSERT_EQ(a.size(), b.size());
    float diff = 0.0f, scale = 0.0f;
    for (size_t i = 0; i < a.size(); ++i) {
      diff = std::max(diff, std::fabs(a[i] - b[i]));
      scale = std::max(scale, std::fabs(b[i]));
    }
    EXPECT_LE(diff, 1e-5f * scale);
  }
}

TEST_F(UpgModelTest, FastBackendDecodesTheSameTokensAsTheReference) {
  for (int bits : {4, 3}) {
    SCOPED_TRACE("upg" + std::to_string(bits));
    UpgConvertOptions options;
    options.bits = bits;
    options.calibration = "none";
    options.threads = 2;
    const fs::path path = dir_ / ("none" + std::to_string(bits) + ".gguf");
    convert_gguf_upg(GgufFile::open(dir_ / "in.gguf"), path, options);
    Session reference(session_options(path, "cpu-ref")), fast(session_options(path, "cpu"));
    const std::vector<int32_t> prompt = {1, 11, 4, 8};
    test::expect_same_greedy_up_to_a_near_tie(reference, prompt, fast.generate_greedy(prompt, 24),
                                              reference.generate_greedy(prompt, 24), 2.0f * kLogitsTolerance,
                                              "decode");
    // A 12-token prompt goes through the fast backend's prefill GEMM.
    Session reference_long(session_options(path, "cpu-ref")), fast_long(session_options(path, "cpu"));
    const std::vector<int32_t> long_prompt = {1, 11, 4, 8, 30, 2, 17, 5, 9, 40, 3, 12};
    const std::span<const float> want = reference_long.prefill(long_prompt);
    const std::span<const float> got = fast_long.prefill(long_prompt);
    float diff = 0, scale = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      diff = std::max(diff, std::fabs(got[i] - want[i]));
      scale = std::max(scale, std::fabs(want[i]));
    }
    std::printf("prefill: max|fast - reference| / max|reference| = %.3g\n", diff / scale);
    EXPECT_LE(diff, kLogitsTolerance * scale);
    reference_long.reset();
    fast_long.reset();
    test::expect_same_greedy_up_to_a_near_tie(reference_long, long_prompt, fast_long.generate_greedy(long_prompt, 16),
                                              reference_long.generate_greedy(long_prompt, 16),
                                              2.0f * kLogitsTolerance, "prefill GEMM");
  }
}

}  // namespace
}  // namespace pdvm

// --gpu-mode selection: which paths the engine tries, in order, for each request and backend, and
// the Session's default on a host backend (no GPU needed; tests/gpu/pdvm_fused_prompts_test.cpp
// covers the CUDA side).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "model/synth_model.h"
#include "pdvm/decode_accelerator.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "test_support.h"

namespace pdvm {
namespace {

using Modes = std::vector<std::string>;

TEST(GpuMode, AutoPrefersTheFastestFusedModeOnCuda) {
  EXPECT_EQ(gpu_mode_candidates("auto", "cuda"), (Modes{"token", "layer", "unfused"}));
}

TEST(GpuMode, AutoIsUnfusedOnHostBackends) {
  for (const char* backend : {"cpu", "cpu-ref"}) EXPECT_EQ(gpu_mode_candidates("auto", backend), Modes{"unfused"});
}

TEST(GpuMode, ExplicitModesFallBackOnlyToUnfused) {
  for (const char* backend : {"cuda", "cpu"}) {
    EXPECT_EQ(gpu_mode_candidates("token", backend), (Modes{"token", "unfused"}));
    EXPECT_EQ(gpu_mode_candidates("layer", backend), (Modes{"layer", "unfused"}));
    EXPECT_EQ(gpu_mode_candidates("unfused", backend), Modes{"unfused"});
  }
}

TEST(GpuMode, FloatActivationTypesAreTheRealCheckpointQuants) {
  for (TensorType t : {TensorType::kQ4_1, TensorType::kQ4_K, TensorType::kQ6_K})
    EXPECT_TRUE(fused_float_activation_type(t)) << type_name(t);
  for (TensorType t : {TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kUpg4})
    EXPECT_FALSE(fused_float_activation_type(t)) << type_name(t);
  // Only layer matrices decide.
  EXPECT_TRUE(fused_activations_follow("blk.0.ffn_down.weight"));
  EXPECT_TRUE(fused_activations_follow("blk.31.attn_v.weight"));
  EXPECT_FALSE(fused_activations_follow("output.weight"));
  EXPECT_FALSE(fused_activations_follow("token_embd.weight"));
}

// A llama-shaped tensor list (norms F32) of about `bytes` weight bytes, matrices of `type` and
// the output matrix of `head_type`; n_bytes as a file would give them.
std::vector<GgufTensor> model_tensors(uint64_t bytes, TensorType type, TensorType head_type) {
  const int64_t width = 4096, vocab = 32000;
  std::vector<GgufTensor> tensors;
  auto add = [&](const std::string& name, TensorType t, int64_t cols, int64_t rows) {
    GgufTensor g;
    g.name = name;
    g.type = t;
    g.shape = {cols, rows};
    // UPG rows have no fixed size: about 4.5 bits a weight for the test.
    g.n_bytes = static_cast<uint64_t>(is_upg_type(t) ? cols * rows * 9 / 16 : type_bytes(t, cols) * rows);
    tensors.push_back(g);
    return g.n_bytes;
  };
  uint64_t total = add("output.weight", head_type, width, vocab);
  for (int layer = 0; total < bytes; ++layer) {
    total += add("blk." + std::to_string(layer) + ".attn_norm.weight", TensorType::kF32, width, 1);
    total += add("blk." + std::to_string(layer) + ".ffn_down.weight", type, width, width);
  }
  return tensors;
}

// --gpu-mode auto's measured exception: float-activation types in the layers above 128 MiB run
// unfused; Q4_0, Q8_0, F16 and UPG models of any size, whatever their head, and the smaller
// float-activation ones, stay fused.
TEST(GpuMode, AutoTakesUnfusedWhereTheFusedKernelsMeasuredSlower) {
  std::uniform_int_distribution<uint64_t> large(uint64_t{4} << 30, uint64_t{12} << 30);
  std::uniform_int_distribution<uint64_t> small(kFusedFloatActivationLimitBytes + (64 << 20), uint64_t{1} << 30);
  for (TensorType type : {TensorType::kQ4_0, TensorType::kQ8_0, TensorType::kF16, TensorType::kUpg4}) {
    EXPECT_EQ(fused_slower_reason(model_tensors(large(test::rng()), type, TensorType::kQ8_0)), "") << type_name(type);
    EXPECT_EQ(fused_slower_reason(model_tensors(large(test::rng()), type, type)), "") << type_name(type);
  }
  // A Q4_0 model with a Q6_K head (llama.cpp's Q4_0 files): int8 activations, fused. Q6_K or
  // Q4_K layers: the float-activation rule, from 128 MiB on.
  for (uint64_t bytes : {small(test::rng()), large(test::rng())}) {
    EXPECT_EQ(fused_slower_reason(model_tensors(bytes, TensorType::kQ4_0, TensorType::kQ6_K)), "");
    for (TensorType layers : {TensorType::kQ6_K, TensorType::kQ4_K}) {
      const std::string why = fused_slower_reason(model_tensors(bytes, layers, TensorType::kQ6_K));
      EXPECT_NE(why.find("weights multiply float activations in the fused kernels, slower than unfused above 128 MiB"),
                std::string::npos)
          << why;
      EXPECT_NE(why.find(type_name(layers)), std::string::npos) << why;
    }
  }
  EXPECT_EQ(fused_slower_reason(model_tensors(kFusedFloatActivationLimitBytes / 2, TensorType::kQ4_1, TensorType::kQ4_1)),
            "");
  EXPECT_EQ(fused_slower_reason({}), "");
}

TEST(GpuMode, UnknownModeNamesTheChoices) {
  try {
    gpu_mode_candidates("warp", "cuda");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'warp' (auto, unfused, layer or token)"), std::string::npos) << e.what();
  }
}

// The default SessionOptions on the CPU backend: the unfused path, silently, with the backend's
// batched prompts and its own cache type.
TEST(GpuMode, SessionDefaultOnTheCpuIsUnfused) {
  const auto path = std::filesystem::temp_directory_path() / ("pdvm_gpu_mode_" + std::to_string(getpid()) + ".gguf");
  synth::write_model(synth::plan_model(synth::shape_by_name("tiny"), TensorType::kQ8_0, test::rng()()), path, 2);
  SessionOptions options;
  options.model_path = path;
  options.backend = "cpu";
  options.n_ctx = 64;
  EXPECT_EQ(options.gpu_mode, "auto");
  testing::internal::CaptureStderr();
  {
    Session session(options);
    EXPECT_EQ(session.gpu_mode(), "unfused");
    EXPECT_FALSE(session.fused_batched_prompts());
    EXPECT_EQ(session.kv_type(), TensorType::kF16);
    const std::vector<int32_t> prompt = {1, 2, 3, 4};
    EXPECT_EQ(session.prefill(prompt).size(), static_cast<size_t>(session.n_vocab()));
  }
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  options.gpu_mode = "warp";
  EXPECT_THROW(Session session(options), Error);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace pdvm

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

TEST(GpuMode, Int16ActivationTypesAreTheRealCheckpointQuants) {
  for (TensorType t : {TensorType::kQ4_1, TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K})
    EXPECT_TRUE(fused_int16_activation_type(t)) << type_name(t);
  for (TensorType t : {TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kUpg4})
    EXPECT_FALSE(fused_int16_activation_type(t)) << type_name(t);
  // Only layer matrices decide.
  EXPECT_TRUE(fused_activations_follow("blk.0.ffn_down.weight"));
  EXPECT_TRUE(fused_activations_follow("blk.31.attn_v.weight"));
  EXPECT_FALSE(fused_activations_follow("output.weight"));
  EXPECT_FALSE(fused_activations_follow("token_embd.weight"));
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

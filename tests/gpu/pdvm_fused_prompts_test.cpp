// The engine's fused GPU modes with batched prompts and the default --gpu-mode, on synthesized
// models through the Session: a prompt runs batched on the CUDA backend, its K/V rows move to the
// fused decoder, decode steps run fused (and move back for the next prompt). Held against the
// unfused CUDA backend on the same file, tokens teacher-forced: the prompt logits are the
// backend's own, the fused steps within the tolerance of their activation type.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "model/synth_model.h"
#include "pdvm/decode_accelerator.h"
#include "pdvm/engine.h"
#include "pdvm_reference.h"

namespace pdvm::test {
namespace {

namespace fs = std::filesystem;

fs::path synth_file(const std::string& shape_name, TensorType type, int64_t n_layer = 0) {
  synth::LlamaShape shape = synth::shape_by_name(shape_name);
  if (n_layer > 0) shape.n_layer = n_layer;
  const fs::path path = fs::temp_directory_path() / ("pdvm_prompts_" + std::to_string(getpid()) + "_" + shape_name +
                                                     "_" + std::string(type_name(type)) + ".gguf");
  synth::write_model(synth::plan_model(shape, type, rng()()), path, 8);
  return path;
}

SessionOptions options_for(const fs::path& path, const std::string& gpu_mode, int64_t n_ctx, bool batched = true) {
  SessionOptions o;
  o.model_path = path;
  o.backend = "cuda";
  o.n_ctx = n_ctx;
  o.gpu_mode = gpu_mode;
  o.fused_batched_prompts = batched;
  return o;
}

std::vector<int32_t> random_tokens(int n, int64_t vocab) {
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (int32_t& t : tokens) t = pick(rng());
  return tokens;
}

std::vector<float> copy(std::span<const float> v) { return {v.begin(), v.end()}; }

struct Worst {
  double first_prompt = 0;  // of the first prompt's logits (an empty cache)
  double step = 0;          // of the decode steps and the later prompts (after fused steps)
};

// Prompt, `steps` teacher-forced decode steps, a second prompt (a chat turn after decoding),
// `steps` more, then a rewind to `rewind` positions and a third prompt: `fused` against `unfused`.
Worst follow(Session& fused, Session& unfused, int64_t vocab, int prompt_len, int steps, int64_t rewind) {
  Worst worst;
  auto check_prompt = [&](const std::vector<int32_t>& prompt) {
    const bool first = fused.n_past() == 0;
    const double err = relative_error(copy(fused.prefill(prompt)), copy(unfused.prefill(prompt)));
    (first ? worst.first_prompt : worst.step) = std::max(first ? worst.first_prompt : worst.step, err);
  };
  auto check_steps = [&] {
    for (int i = 0; i < steps; ++i) {
      const int32_t next = unfused.last_argmax();
      const std::vector<float> want = copy(unfused.decode(next));
      worst.step = std::max(worst.step, relative_error(copy(fused.decode(next)), want));
      ASSERT_EQ(fused.n_past(), unfused.n_past());
    }
  };
  check_prompt(random_tokens(prompt_len, vocab));
  check_steps();
  check_prompt(random_tokens(prompt_len / 2 + 2, vocab));
  check_steps();
  fused.truncate(rewind);
  unfused.truncate(rewind);
  check_prompt(random_tokens(prompt_len / 3 + 2, vocab));
  check_steps();
  return worst;
}

// Batched prompts run on the backend: their logits are the unfused path's; the decode steps
// read K/V rows the backend wrote (and the backend the rows the fused steps wrote).
TEST(FusedPrompts, BatchedPromptsAndFusedStepsFollowTheUnfusedBackend) {
  PDVM_CUDA_BACKEND_OR_SKIP(probe);
  probe.reset();
  struct Case {
    const char* shape;
    TensorType type;
    double step_tolerance;  // float activations: F16; int16: Q4_1 models; int8: Q4_0
  };
  for (const Case& c : {Case{"smollm2-135m", TensorType::kQ4_1, 2e-3}, Case{"tiny", TensorType::kF16, 1e-3},
                        Case{"tiny", TensorType::kQ4_0, 5e-2}}) {
    SCOPED_TRACE(std::string(c.shape) + " " + std::string(type_name(c.type)));
    const fs::path path = synth_file(c.shape, c.type);
    Session unfused(options_for(path, "unfused", 512));
    const int64_t vocab = unfused.n_vocab();
    for (const char* mode : {"token", "layer"}) {
      SCOPED_TRACE(mode);
      Session fused(options_for(path, mode, 512));
      ASSERT_EQ(fused.gpu_mode(), mode);
      ASSERT_TRUE(fused.fused_batched_prompts());
      unfused.reset();
      const Worst worst = follow(fused, unfused, vocab, 96, decode_steps(24), 50);
      std::printf("  %s %s %s: worst relative logits error, first prompt %.2e, fused steps and later prompts %.2e\n",
                  c.shape, std::string(type_name(c.type)).c_str(), mode, worst.first_prompt, worst.step);
      EXPECT_LT(worst.first_prompt, 1e-6);  // the same backend computes both
      EXPECT_LT(worst.step, c.step_tolerance);
    }
    fs::remove(path);
  }
}

// Stepwise prompts (one copy of the weights) give what batched prompts give, within the fused
// steps' tolerance; the default mode picks token mode with batched prompts on the GPU.
TEST(FusedPrompts, StepwisePromptsAndTheDefaultMode) {
  PDVM_CUDA_BACKEND_OR_SKIP(probe);
  probe.reset();
  const fs::path path = synth_file("smollm2-135m", TensorType::kQ4_1);
  SessionOptions defaults;
  defaults.model_path = path;
  defaults.backend = "cuda";
  defaults.n_ctx = 512;
  Session automatic(defaults);
  EXPECT_EQ(automatic.gpu_mode(), "token");
  EXPECT_TRUE(automatic.fused_batched_prompts());
  Session stepwise(options_for(path, "token", 512, false));
  EXPECT_FALSE(stepwise.fused_batched_prompts());
  const Worst worst = follow(stepwise, automatic, automatic.n_vocab(), 64, decode_steps(16), 40);
  std::printf("  stepwise vs batched prompts (q4_1, int16 activations): first prompt %.2e, the rest %.2e\n",
              worst.first_prompt, worst.step);
  // Batched prompts multiply f16 operands on the tensor cores (~1e-3, docs/cuda-backend.md).
  EXPECT_LT(worst.first_prompt, 1e-2);
  EXPECT_LT(worst.step, 1e-2);
  fs::remove(path);
}

// A type the fused kernels lack: the default mode falls back to the unfused path with one notice.
TEST(FusedPrompts, DefaultModeFallsBackWithOneNotice) {
  PDVM_CUDA_BACKEND_OR_SKIP(probe);
  probe.reset();
  const fs::path path = synth_file("tiny", TensorType::kQ5_0);
  SessionOptions defaults;
  defaults.model_path = path;
  defaults.backend = "cuda";
  defaults.n_ctx = 128;
  testing::internal::CaptureStderr();
  Session session(defaults);
  const std::string notices = testing::internal::GetCapturedStderr();
  EXPECT_EQ(session.gpu_mode(), "unfused");
  EXPECT_EQ(std::count(notices.begin(), notices.end(), '\n'), 1) << notices;
  EXPECT_NE(notices.find("--gpu-mode token unavailable"), std::string::npos) << notices;
  EXPECT_NE(notices.find("q5_0"), std::string::npos) << notices;
  fs::remove(path);
}

// Models with int16-activation types run fused by default at any size (until session 19 their
// float activations ran unfused above 128 MiB, measured slower there): no notice.
TEST(FusedPrompts, DefaultModeRunsLargeInt16ActivationModelsFused) {
  PDVM_CUDA_BACKEND_OR_SKIP(probe);
  probe.reset();
  const fs::path path = synth_file("smollm2-135m", TensorType::kQ4_1, 60);  // ~155 MiB
  ASSERT_GT(fs::file_size(path), uint64_t{128} << 20);
  testing::internal::CaptureStderr();
  {
    Session automatic(options_for(path, "auto", 128));
    EXPECT_EQ(automatic.gpu_mode(), "token");
  }
  const std::string notices = testing::internal::GetCapturedStderr();
  EXPECT_EQ(notices, "");
  fs::remove(path);
}

// Long context: a 3,968-token prompt batched into a 4,096-position cache, then 128 fused steps
// against the unfused backend; two runs of the default mode give the same greedy tokens.
TEST(FusedPrompts, LongContextAndRepeatedRuns) {
  PDVM_CUDA_BACKEND_OR_SKIP(probe);
  probe.reset();
  const fs::path path = synth_file("smollm2-135m", TensorType::kQ4_1);
  Session unfused(options_for(path, "unfused", 4096));
  Session fused(options_for(path, "auto", 4096));
  ASSERT_EQ(fused.gpu_mode(), "token");
  const std::vector<int32_t> prompt = random_tokens(3968, fused.n_vocab());
  EXPECT_LT(relative_error(copy(fused.prefill(prompt)), copy(unfused.prefill(prompt))), 1e-6);
  double worst = 0;
  const int steps = decode_steps(127);
  for (int i = 0; i < steps; ++i) {
    const int32_t next = unfused.last_argmax();
    const std::vector<float> want = copy(unfused.decode(next));
    worst = std::max(worst, relative_error(copy(fused.decode(next)), want));
  }
  EXPECT_EQ(fused.n_past(), 3968 + steps);
  std::printf("  4k context: worst relative logits error of the fused steps %.2e\n", worst);
  EXPECT_LT(worst, 2e-3);

  const std::vector<int32_t> short_prompt(prompt.begin(), prompt.begin() + 20);
  std::vector<std::vector<int32_t>> runs;
  for (int run = 0; run < 2; ++run) {
    runs.push_back(Session(options_for(path, "auto", 512)).generate_greedy(short_prompt, decode_steps(128)));
  }
  EXPECT_EQ(runs[0], runs[1]);
  fs::remove(path);
}

}  // namespace
}  // namespace pdvm::test

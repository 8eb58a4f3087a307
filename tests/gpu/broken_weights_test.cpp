// NaN weights on the GPU paths: every logit of a step is NaN, and each path (unfused CUDA, fused
// layer and token modes, the vocabulary-split head of an in-process tensor-parallel split, and a
// token-mode launch of several steps) stops with ErrorKind::kNumeric at the first step, never
// emits a token picked from NaNs and never reads outside the embedding: the device stays healthy
// for the next session (an out-of-bounds read would leave a sticky CUDA error).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "pdvm/cuda_backend.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/gguf.h"
#include "pdvm/pdvm_fused.h"
#include "random_llama.h"

namespace pdvm {
namespace {

test::RandomLlama fused_model() {
  test::RandomLlama spec;
  spec.n_layer = 2;
  spec.n_embd = 256;
  spec.n_head = 8;
  spec.n_head_kv = 4;
  spec.n_ff = 512;
  spec.n_vocab = 800;
  spec.weight_type = std::uniform_int_distribution<int>(0, 1)(test::rng()) ? TensorType::kF16 : TensorType::kQ8_0;
  return spec;
}

SessionOptions gpu_options(const std::filesystem::path& path, const std::string& mode, int tp = 1) {
  SessionOptions o;
  o.model_path = path;
  o.backend = "cuda";
  o.n_ctx = 64;
  o.gpu_mode = mode;
  o.tensor_parallel = tp;
  if (tp > 1) {
    o.communicator = "in-process";
    o.tp_devices = std::vector<int>(static_cast<size_t>(tp), 0);
  }
  return o;
}

// Runs `steps` and expects it to stop with a numeric error (not a device error, not a token).
template <class Steps>
void expect_numeric_error(const std::string& what, Steps&& steps) {
  try {
    steps();
    ADD_FAILURE() << what << ": no error from NaN logits";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNumeric) << what << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find("non-finite logits"), std::string::npos) << what << ": " << e.what();
  }
}

TEST(BrokenWeightsGpu, NaNLogitsStopEveryGpuPathWithANumericError) {
  if (cuda_device_count() == 0) {
    if (std::getenv("PDVM_REQUIRE_GPU")) ADD_FAILURE() << "no CUDA device but PDVM_REQUIRE_GPU is set";
    GTEST_SKIP() << "no CUDA device";
  }
  test::RandomLlama spec = fused_model();
  const auto good_path = test::write_random_llama(spec, "broken_weights_good.gguf");
  spec.nan_tensor = std::uniform_int_distribution<int>(0, 1)(test::rng()) ? "output_norm.weight" : "blk.1.attn_norm.weight";
  const auto nan_path = test::write_random_llama(spec, "broken_weights_nan.gguf");
  SCOPED_TRACE(std::string(type_name(spec.weight_type)) + " weights, NaN in " + spec.nan_tensor);
  const auto prompt = test::random_tokens(5, spec.n_vocab);

  for (const char* mode : {"unfused", "layer", "token"}) {
    Session session(gpu_options(nan_path, mode));
    ASSERT_EQ(session.gpu_mode(), mode);
    expect_numeric_error(std::string(mode) + ", greedy", [&] {
      session.eval(prompt);
      session.last_argmax();
    });
  }
  {
    // What the sampler gets on the unfused path (the fused modes already stop in the prompt).
    Session session(gpu_options(nan_path, "unfused"));
    const auto logits = session.prefill(prompt);
    EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isnan(v); }));
  }
  {
    Session split(gpu_options(nan_path, "layer", 2));  // each rank's share of the head, then the pair pick
    ASSERT_EQ(split.tensor_parallel(), 2);
    expect_numeric_error("layer --tp 2 in-process", [&] { split.generate_greedy(prompt, 4); });
  }
  {
    // One token-mode launch per step, eight steps in a row on the device: the first step has no
    // finite winner, so its id is -1 and the later steps embed token 0.
    const GgufFile file = GgufFile::open(nan_path);
    FusedDecoder decoder(fused_view_from_gguf(file, 64));
    expect_numeric_error("FusedDecoder::generate, 8 steps", [&] { decoder.generate(prompt[0], 0, 8, FusedMode::kToken); });
  }

  // The device took no fault: the same shapes with finite weights decode alike on both paths.
  Session unfused(gpu_options(good_path, "unfused"));
  Session fused(gpu_options(good_path, "token"));
  const auto want = unfused.generate_greedy(prompt, 8);
  EXPECT_EQ(fused.generate_greedy(prompt, 8), want);
  for (int32_t t : want) EXPECT_TRUE(t >= 0 && t < spec.n_vocab) << t;
  std::filesystem::remove(good_path);
  std::filesystem::remove(nan_path);
}

}  // namespace
}  // namespace pdvm

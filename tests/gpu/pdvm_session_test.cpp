// --gpu-mode layer|token through the engine Session: the PDVM fused decoder gives the logits
// of the unfused CPU reference backend on the same GGUF file, prompt and decode steps alike.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm_reference.h"

namespace pdvm {
namespace {

class FusedSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    FusedConfig c;
    c.n_layer = 3;
    c.n_embd = 256;
    c.n_head = 8;
    c.n_head_kv = 2;
    c.head_dim = 32;
    c.n_ff = 512;
    c.n_vocab = 500;
    c.n_ctx = 64;
    c.n_rot = 32;
    ref_ = std::make_unique<test::RefModel>(c, TensorType::kF16, true);
    path_ = std::filesystem::temp_directory_path() / ("pdvm_session_" + std::to_string(getpid()) + ".gguf");
    test::write_gguf(*ref_).write(path_);
  }
  void TearDown() override { std::filesystem::remove(path_); }

  SessionOptions options(const std::string& gpu_mode) const {
    SessionOptions o;
    o.model_path = path_;
    o.backend = "cpu-ref";
    o.n_ctx = 64;
    o.gpu_mode = gpu_mode;
    return o;
  }

  std::unique_ptr<test::RefModel> ref_;
  std::filesystem::path path_;
};

std::vector<float> copy(std::span<const float> v) { return {v.begin(), v.end()}; }

TEST_F(FusedSessionTest, FusedModesMatchTheUnfusedBackend) {
  std::uniform_int_distribution<int32_t> pick(0, 499);
  std::vector<int32_t> prompt(6);
  for (int32_t& t : prompt) t = pick(test::rng());
  for (const char* mode : {"layer", "token"}) {
    SCOPED_TRACE(mode);
    Session unfused(options("unfused"));
    Session fused(options(mode));
    std::vector<float> want = copy(unfused.prefill(prompt));
    std::vector<float> got = copy(fused.prefill(prompt));
    EXPECT_LT(test::relative_error(got, want), 1e-3);
    for (int step = 0; step < 12; ++step) {
      const int32_t next = unfused.last_argmax();  // both sessions take the same tokens
      want = copy(unfused.decode(next));
      got = copy(fused.decode(next));
      ASSERT_LT(test::relative_error(got, want), 1e-3) << "step " << step;
      EXPECT_EQ(fused.n_past(), unfused.n_past());
    }
    EXPECT_EQ(fused.last_argmax(), std::max_element(got.begin(), got.end()) - got.begin());
  }
}

TEST_F(FusedSessionTest, UnknownModeIsRejected) {
  EXPECT_THROW(Session session(options("warp")), Error);
}

}  // namespace
}  // namespace pdvm

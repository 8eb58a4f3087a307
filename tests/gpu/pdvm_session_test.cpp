// --gpu-mode layer|token through the engine Session: the PDVM fused decoder gives the logits
// of the unfused CPU reference backend on the same GGUF file, prompt and decode steps alike;
// UPG models converted by `pdvm convert`; models it cannot run fall back with a notice.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "model/synth_model.h"
#include "pdvm/engine.h"
#include "pdvm/sampling.h"
#include "pdvm/error.h"
#include "pdvm_reference.h"
#include "random_llama.h"
#include "upg/upg_convert.h"

namespace pdvm {
namespace {

class FusedSessionTest : public ::testing::Test {
 protected:
  static constexpr int kVocab = 500;

  void SetUp() override {
    FusedConfig c;
    c.n_layer = 3;
    c.n_embd = 256;
    c.n_head = 8;
    c.n_head_kv = 2;
    c.head_dim = 32;
    c.n_ff = 512;
    c.n_vocab = kVocab;
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
  std::vector<int32_t> prompt = test::random_tokens(6, kVocab);
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

// greedy_token() queues the next step before it returns: the tokens and logits are those of a
// session that waits for each step, up to the end of the context (where nothing is queued).
TEST_F(FusedSessionTest, RunningAheadGivesTheStepwiseTokens) {
  std::vector<int32_t> prompt = test::random_tokens(6, kVocab);
  for (const char* mode : {"layer", "token"}) {
    SCOPED_TRACE(mode);
    Session ahead(options(mode));
    Session stepwise(options(mode));
    ahead.eval(prompt);
    stepwise.eval(prompt);
    for (int step = 0; ahead.n_past() < ahead.n_ctx(); ++step) {
      const int32_t token = ahead.greedy_token();
      ASSERT_EQ(token, stepwise.last_argmax()) << "step " << step;
      // Logits asked for after the next step was queued: that step's own, not the queued one's.
      if (step % 7 == 3) {
        ASSERT_LT(test::relative_error(copy(ahead.last_logits()), copy(stepwise.last_logits())), 1e-6);
      }
      ahead.eval({&token, 1});
      stepwise.eval({&token, 1});
    }
    EXPECT_EQ(ahead.greedy_token(), stepwise.last_argmax());
  }
}

// A queued step is dropped when the rows it attended to change: here the same token at the
// same position, after the two positions before it were replaced by a batched prompt.
TEST_F(FusedSessionTest, QueuedStepIsDroppedWhenItsContextChanges) {
  std::vector<int32_t> prompt = test::random_tokens(8, kVocab);
  std::vector<int32_t> edited = prompt;
  edited[6] = (prompt[6] + 1) % kVocab;
  edited[7] = (prompt[7] + 1) % kVocab;
  Session ahead(options("token"));
  ASSERT_TRUE(ahead.fused_batched_prompts());
  ahead.eval(prompt);
  const int32_t token = ahead.greedy_token();  // queues `token` at position 8
  ahead.truncate(6);
  ahead.eval(std::span<const int32_t>(edited).subspan(6));  // batched on the backend
  const std::vector<float> got = copy(ahead.decode(token));
  Session fresh(options("token"));
  fresh.eval(edited);
  const std::vector<float> want = copy(fresh.decode(token));
  EXPECT_LT(test::relative_error(got, want), 1e-6);
}

// The session's largest logits, ranked on the GPU, are `row`'s in rank order, and sampling from
// them (from_top) picks what sampling from the row (from_row) picks: `token`.
void sample_from_ranked_logits(Session& session, const std::vector<float>& row, const std::vector<int32_t>& history,
                               Sampler& from_top, Sampler& from_row, int32_t& token) {
  std::vector<LogitCandidate> top;
  ASSERT_TRUE(session.top_logits(row.size(), top));
  ASSERT_EQ(top.size(), row.size());
  for (size_t i = 0; i < top.size(); ++i) {
    ASSERT_EQ(top[i].logit, row[static_cast<size_t>(top[i].id)]) << "rank " << i;
    if (i > 0) {
      const LogitCandidate& a = top[i - 1];
      ASSERT_TRUE(a.logit > top[i].logit || (a.logit == top[i].logit && a.id < top[i].id)) << "rank " << i;
    }
  }
  ASSERT_TRUE(session.top_logits(from_top.candidates_needed(row.size(), history), top));
  token = from_top.sample_top(top, row.size(), history);
  ASSERT_EQ(token, from_row.sample(row, history));
}

// The largest logits ranked on the GPU are those of the whole row read back, in rank order, and
// sampling from them draws the whole row's tokens (top-k 40, top-p, a penalty above 1), also
// right after greedy_token() queued a step ahead.
TEST_F(FusedSessionTest, LargestLogitsRankedOnTheGpuSampleAsTheWholeRow) {
  std::vector<int32_t> history = test::random_tokens(7, kVocab);
  SamplingParams params;
  params.temperature = 1.5f;
  params.repeat_penalty = 1.2f;
  params.seed = test::rng()();
  Sampler from_top(params), from_row(params);
  Session session(options("token"));
  session.eval(history);
  std::vector<LogitCandidate> top;
  for (int step = 0; step < 40; ++step) {
    if (step % 9 == 4) {
      const int32_t greedy = session.greedy_token();  // queues a step: the logits are redone
      ASSERT_EQ(greedy, session.last_argmax());
    }
    const std::vector<float> row = copy(session.last_logits());
    if (step == 0) {
      // The prompt ran batched on the backend, which holds these logits.
      ASSERT_FALSE(session.top_logits(row.size(), top));
      const int32_t token = from_row.sample(row, history);
      ASSERT_EQ(token, from_top.sample(row, history));
      history.push_back(token);
      session.eval({&token, 1});
      continue;
    }
    SCOPED_TRACE("step " + std::to_string(step));
    int32_t token = -1;
    ASSERT_NO_FATAL_FAILURE(sample_from_ranked_logits(session, row, history, from_top, from_row, token));
    history.push_back(token);
    session.eval({&token, 1});
  }
}

// Tokens drawn on the GPU (Session::draw_token, the next step queued ahead or not) are the host
// sampler's picks from the same logits with the same seed, in both fused modes; with a
// repetition penalty nothing is drawn there and the sampler's stream is left as it was.
TEST_F(FusedSessionTest, TokensDrawnOnTheGpuAreTheSamplersPicks) {
  for (const char* mode : {"layer", "token"}) {
    SCOPED_TRACE(mode);
    std::vector<int32_t> history = test::random_tokens(7, kVocab);
    SamplingParams params;
    params.temperature = 1.5f;
    params.top_p = 0.9f;
    params.seed = test::rng()();
    Sampler on_gpu(params), on_host(params);
    Session session(options(mode));
    session.eval(history);
    ASSERT_FALSE(session.draw_token(on_gpu, history, true).has_value());  // batched prompt: backend logits
    int32_t token = on_gpu.sample(session.last_logits(), history);
    ASSERT_EQ(token, on_host.sample(session.last_logits(), history));
    for (int step = 0; session.n_past() + 1 < session.n_ctx(); ++step) {
      history.push_back(token);
      session.eval({&token, 1});
      const std::optional<int32_t> drawn = session.draw_token(on_gpu, history, step % 3 != 0);
      ASSERT_TRUE(drawn.has_value()) << "step " << step;
      // last_logits() after a queued step redoes this one; so does last_argmax() after a draw.
      const std::vector<float> row = copy(session.last_logits());
      ASSERT_EQ(*drawn, on_host.sample(row, history)) << "step " << step;
      if (step % 5 == 2) {
        ASSERT_EQ(session.last_argmax(), std::max_element(row.begin(), row.end()) - row.begin()) << "step " << step;
      }
      token = *drawn;
    }
    SamplingParams penalized = params;
    penalized.repeat_penalty = 1.3f;
    Sampler gpu_penalized(penalized), host_penalized(penalized);
    history.push_back(token);
    session.eval({&token, 1});  // the context's last position
    EXPECT_FALSE(session.draw_token(gpu_penalized, history, true).has_value());
    EXPECT_EQ(gpu_penalized.sample(session.last_logits(), history), host_penalized.sample(session.last_logits(), history));
  }
}

// The unfused CUDA backend ranks its logits on the GPU too: the largest logits of every step are
// the row's, and sampling from them picks the row's tokens. The CPU backend reads its row.
TEST_F(FusedSessionTest, UnfusedCudaBackendRanksItsLogits) {
  std::vector<int32_t> history = test::random_tokens(6, kVocab);
  SessionOptions o = options("unfused");
  o.backend = "cuda";
  Session session(o);
  Session on_cpu(options("unfused"));
  SamplingParams params;
  params.temperature = 1.2f;
  params.repeat_penalty = 1.1f;
  params.seed = test::rng()();
  Sampler from_top(params), from_row(params);
  session.eval(history);
  on_cpu.eval(history);
  std::vector<LogitCandidate> top;
  EXPECT_FALSE(on_cpu.top_logits(40, top));
  for (int step = 0; step < 24; ++step) {
    const std::vector<float> row = copy(session.last_logits());
    SCOPED_TRACE("step " + std::to_string(step));
    int32_t token = -1;
    ASSERT_NO_FATAL_FAILURE(sample_from_ranked_logits(session, row, history, from_top, from_row, token));
    history.push_back(token);
    session.eval({&token, 1});
  }
}

TEST_F(FusedSessionTest, UnknownModeIsRejected) {
  EXPECT_THROW(Session session(options("warp")), Error);
}

// Logits of `fused` against `unfused` over a random prompt and teacher-forced decode steps
// (both take the unfused argmax), within `tolerance`.
void compare_sessions(const SessionOptions& unfused_options, const SessionOptions& fused_options, int vocab,
                      double tolerance) {
  std::vector<int32_t> prompt = test::random_tokens(5, vocab);
  Session unfused(unfused_options);
  Session fused(fused_options);
  std::vector<float> want = copy(unfused.prefill(prompt));
  std::vector<float> got = copy(fused.prefill(prompt));
  EXPECT_LT(test::relative_error(got, want), tolerance);
  double worst = 0;
  const int steps = test::decode_steps(24);
  for (int step = 0; step < steps; ++step) {
    const int32_t next = unfused.last_argmax();
    want = copy(unfused.decode(next));
    got = copy(fused.decode(next));
    const double err = test::relative_error(got, want);
    worst = std::max(worst, err);
    ASSERT_LT(err, tolerance) << "step " << step;
    // The fused argmax is the reference's, or within rounding of it (near-ties).
    const float best = *std::max_element(want.begin(), want.end());
    double ss = 0;
    for (float v : want) ss += double{v} * v;
    ASSERT_GE(want[fused.last_argmax()], best - 4 * tolerance * std::sqrt(ss / want.size())) << "step " << step;
  }
  std::printf("  worst relative logits error: %.2e\n", worst);
}

// A synthetic model converted to UPG4 and UPG3 (pdvm convert): the fused modes against the
// unfused CPU reference backend, and greedy tokens identical in layer and token mode.
TEST(FusedSessionUpg, ConvertedModelsMatchTheUnfusedBackend) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("pdvm_session_upg_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const synth::ModelPlan plan = synth::plan_model(synth::shape_by_name("tiny"), TensorType::kF32, test::rng()());
  synth::write_model(plan, dir / "in.gguf", 2);
  for (int bits : {4, 3}) {
    SCOPED_TRACE("upg" + std::to_string(bits));
    UpgConvertOptions convert;
    convert.bits = bits;
    convert.calibration = "none";
    convert.threads = 2;
    const fs::path path = dir / ("upg" + std::to_string(bits) + ".gguf");
    convert_gguf_upg(GgufFile::open(dir / "in.gguf"), path, convert);
    SessionOptions o;
    o.model_path = path;
    o.backend = "cpu-ref";
    o.n_ctx = 64;
    std::vector<std::vector<int32_t>> greedy;
    for (const char* mode : {"layer", "token"}) {
      SCOPED_TRACE(mode);
      SessionOptions fused = o;
      fused.gpu_mode = mode;
      testing::internal::CaptureStderr();
      compare_sessions(o, fused, 512, 5e-2);
      const std::string notices = testing::internal::GetCapturedStderr();
      EXPECT_EQ(notices.find("unfused"), std::string::npos) << notices;  // really fused
      const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
      greedy.push_back(Session(fused).generate_greedy(prompt, test::decode_steps(32)));
    }
    EXPECT_EQ(greedy[0], greedy[1]);
  }
  fs::remove_all(dir);
}

TEST_F(FusedSessionTest, UnsupportedModelFallsBackWithANotice) {
  test::RefModel q5(ref_->config(), TensorType::kQ5_0, true);
  test::write_gguf(q5).write(path_);
  std::vector<int32_t> prompt = test::random_tokens(4, kVocab);
  Session unfused(options("unfused"));
  testing::internal::CaptureStderr();
  Session fallback(options("token"));
  const std::string notice = testing::internal::GetCapturedStderr();
  EXPECT_NE(notice.find("q5_0"), std::string::npos) << notice;
  EXPECT_NE(notice.find("unfused path"), std::string::npos) << notice;
  EXPECT_EQ(copy(fallback.prefill(prompt)), copy(unfused.prefill(prompt)));
  EXPECT_EQ(copy(fallback.decode(7)), copy(unfused.decode(7)));
}

}  // namespace
}  // namespace pdvm

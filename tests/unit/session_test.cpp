// Session, KV cache and model loading on tiny random GGUFs with the CPU reference backend:
// batching and cache reuse must not change the logits, and bad input gives clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "pdvm/backend_registry.h"
#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "random_llama.h"

namespace pdvm {
namespace {

std::vector<float> copy(std::span<const float> logits) { return {logits.begin(), logits.end()}; }

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spec_.tied = std::uniform_int_distribution<int>(0, 1)(test::rng()) == 1;
    path_ = test::write_random_llama(spec_, "session_test.gguf");
  }
  void TearDown() override { std::filesystem::remove(path_); }

  SessionOptions options(int64_t n_ctx = 64, int max_batch = 512) const {
    SessionOptions o;
    o.model_path = path_;
    o.backend = "cpu-ref";
    o.n_ctx = n_ctx;
    o.max_batch = max_batch;
    return o;
  }

  test::RandomLlama spec_;
  std::filesystem::path path_;
};

TEST_F(SessionTest, PrefillEqualsOneDecodeStepPerToken) {
  const auto tokens = test::random_tokens(20, spec_.n_vocab);
  Session batched(options());
  const auto all = copy(batched.prefill_all(tokens));
  Session stepwise(options());
  for (size_t t = 0; t < tokens.size(); ++t) {
    const auto logits = stepwise.decode(tokens[t]);
    const std::span<const float> expected(all.data() + t * spec_.n_vocab, spec_.n_vocab);
    EXPECT_LE(test::relative_difference(logits, expected), 1e-5f) << "token " << t;
  }
  EXPECT_EQ(stepwise.n_past(), 20);
  EXPECT_EQ(batched.n_past(), 20);
}

TEST_F(SessionTest, PrefillReturnsTheLastRowOfPrefillAll) {
  const auto tokens = test::random_tokens(9, spec_.n_vocab);
  Session a(options()), b(options());
  const auto last = copy(a.prefill(tokens));
  const auto all = b.prefill_all(tokens);
  EXPECT_EQ(test::relative_difference(last, all.subspan(8 * spec_.n_vocab)), 0.0f);
}

TEST_F(SessionTest, ChunkedPrefillMatchesOneBatch) {
  const auto tokens = test::random_tokens(23, spec_.n_vocab);
  Session whole(options());
  Session chunked(options(64, 5));
  const auto expected = copy(whole.prefill_all(tokens));
  EXPECT_LE(test::relative_difference(chunked.prefill_all(tokens), expected), 1e-5f);
  chunked.reset();
  whole.reset();
  EXPECT_LE(test::relative_difference(chunked.prefill(tokens), copy(whole.prefill(tokens))), 1e-5f);
}

TEST_F(SessionTest, TruncateReusesThePrefix) {
  const auto prefix = test::random_tokens(11, spec_.n_vocab);
  const auto first_tail = test::random_tokens(7, spec_.n_vocab);
  const auto second_tail = test::random_tokens(5, spec_.n_vocab);
  std::vector<int32_t> full = prefix;
  full.insert(full.end(), second_tail.begin(), second_tail.end());

  Session fresh(options());
  const auto expected = copy(fresh.prefill(full));

  Session reused(options());
  reused.prefill(prefix);
  reused.prefill(first_tail);
  reused.truncate(static_cast<int64_t>(prefix.size()));
  EXPECT_EQ(reused.n_past(), 11);
  EXPECT_LE(test::relative_difference(reused.prefill(second_tail), expected), 1e-5f);

  reused.reset();
  EXPECT_EQ(reused.n_past(), 0);
  EXPECT_LE(test::relative_difference(reused.prefill(full), expected), 1e-5f);
  EXPECT_THROW(reused.truncate(17), Error);
}

TEST_F(SessionTest, OverflowIsAnErrorNamingTheContextSize) {
  Session session(options(16));
  session.prefill(test::random_tokens(10, spec_.n_vocab));
  try {
    session.prefill(test::random_tokens(7, spec_.n_vocab));
    FAIL() << "expected an overflow error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfRange);
    const std::string message = e.what();
    EXPECT_NE(message.find("context size 16"), std::string::npos) << message;
    EXPECT_NE(message.find("7 more tokens"), std::string::npos) << message;
  }
  EXPECT_EQ(session.n_past(), 10);  // the failed request changed nothing
  session.prefill(test::random_tokens(6, spec_.n_vocab));
  EXPECT_EQ(session.n_past(), 16);
  EXPECT_THROW(session.decode(1), Error);
}

TEST_F(SessionTest, BackendArgmaxMatchesTheHostLogits) {
  Session session(options());
  session.eval(test::random_tokens(6, spec_.n_vocab));
  const auto logits = copy(session.last_logits());
  EXPECT_EQ(session.last_argmax(), std::max_element(logits.begin(), logits.end()) - logits.begin());
  const auto greedy = session.generate_greedy(test::random_tokens(3, spec_.n_vocab), 5);
  EXPECT_EQ(greedy.size(), 5u);
  EXPECT_EQ(session.n_past(), 6 + 3 + 4);
}

// NaN weights (a crafted or corrupted file) make every logit NaN: greedy decoding and sampling,
// on both CPU backends, stop with a numeric error naming the position, never emit a token.
TEST(BrokenWeights, NaNLogitsAreANumericErrorOnEveryCpuBackend) {
  test::RandomLlama spec;
  spec.nan_tensor = std::uniform_int_distribution<int>(0, 1)(test::rng()) ? "output_norm.weight" : "blk.1.ffn_norm.weight";
  const auto path = test::write_random_llama(spec, "nan_weights.gguf");
  for (const char* backend : {"cpu-ref", "cpu"}) {
    SessionOptions o;
    o.model_path = path;
    o.backend = backend;
    o.n_ctx = 32;
    Session session(o);
    const auto prompt = test::random_tokens(4, spec.n_vocab);
    session.eval(prompt);
    const auto logits = session.last_logits();
    EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isnan(v); })) << spec.nan_tensor;
    try {
      const int32_t token = session.last_argmax();
      ADD_FAILURE() << backend << ": greedy token " << token << " from NaN logits";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kNumeric) << e.what();
      EXPECT_NE(std::string(e.what()).find("at position 3"), std::string::npos) << e.what();
    }
    EXPECT_THROW(session.generate_greedy(prompt, 3), Error) << backend;
  }
  std::filesystem::remove(path);
}

TEST_F(SessionTest, HalfPrecisionCacheStaysCloseToF32) {
  const auto tokens = test::random_tokens(30, spec_.n_vocab);
  SessionOptions half = options(), exact = options();
  half.kv_type = TensorType::kF16;
  exact.kv_type = TensorType::kF32;
  Session f32_session(exact), f16_session(half);
  const auto expected = copy(f32_session.prefill_all(tokens));
  const auto rounded = f16_session.prefill_all(tokens);
  const float difference = test::relative_difference(rounded, expected);
  EXPECT_GT(difference, 0.0f);  // the cache really holds halves
  EXPECT_LT(difference, 5e-3f);
}

TEST_F(SessionTest, TokenOutsideTheVocabularyIsAnError) {
  Session session(options());
  try {
    session.decode(spec_.n_vocab);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfRange);
  }
  EXPECT_EQ(session.n_past(), 0);
}

TEST_F(SessionTest, LoadProgressClimbsToTheFileTensorBytes) {
  SessionOptions o = options();
  std::vector<std::pair<uint64_t, uint64_t>> reports;
  o.load_progress = [&](uint64_t done, uint64_t total) { reports.emplace_back(done, total); };
  Session session(o);
  uint64_t tensor_bytes = 0;
  for (const GgufTensor& t : session.gguf().tensors()) tensor_bytes += t.n_bytes;
  // One report per loaded weight (embedding, final norm, 9 per layer), the last one complete.
  ASSERT_GE(reports.size(), 2u + 9u * static_cast<size_t>(spec_.n_layer));
  for (size_t i = 0; i < reports.size(); ++i) {
    EXPECT_EQ(reports[i].second, tensor_bytes);
    EXPECT_LE(reports[i].first, tensor_bytes);
    if (i > 0) {
      EXPECT_GT(reports[i].first, reports[i - 1].first);
    }
  }
  EXPECT_EQ(reports.back().first, tensor_bytes);
}

TEST_F(SessionTest, UnknownBackendListsTheKnownOnes) {
  SessionOptions o = options();
  o.backend = "tpu";
  try {
    Session session(o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("cpu-ref"), std::string::npos) << e.what();
  }
}

struct BadModelCase {
  const char* what;
  test::RandomLlama spec;
  ErrorKind kind;
  const char* message_part;
};

TEST(ModelLoading, BadFilesGiveErrorsNamingTheProblem) {
  test::RandomLlama missing, misshaped, wrong_arch, bad_heads, huge_layers;
  missing.omit_tensor = "blk.1.ffn_up.weight";
  misshaped.misshape_tensor = "blk.0.attn_k.weight";
  wrong_arch.architecture = "gpt2";
  bad_heads.n_head_kv = 3;
  huge_layers.declared_layers = 1 << 30;
  const BadModelCase cases[] = {
      {"missing tensor", missing, ErrorKind::kFileFormat, "blk.1.ffn_up.weight"},
      {"wrong shape", misshaped, ErrorKind::kFileFormat, "blk.0.attn_k.weight"},
      {"architecture", wrong_arch, ErrorKind::kUnsupported, "gpt2"},
      {"heads", bad_heads, ErrorKind::kFileFormat, "head_count_kv"},
      {"block_count", huge_layers, ErrorKind::kFileFormat, "blk.2.attn_norm.weight"},
  };
  for (const auto& c : cases) {
    const auto path = test::write_random_llama(c.spec, "bad_model.gguf");
    SessionOptions o;
    o.model_path = path;
    o.backend = "cpu-ref";
    try {
      Session session(o);
      ADD_FAILURE() << c.what << ": expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), c.kind) << c.what << ": " << e.what();
      EXPECT_NE(std::string(e.what()).find(c.message_part), std::string::npos) << c.what << ": " << e.what();
    }
    std::filesystem::remove(path);
  }
}

TEST(ModelLoading, ConfigDefaultsAndTiedHead) {
  test::RandomLlama spec;
  spec.tied = true;
  const auto path = test::write_random_llama(spec, "config.gguf");
  const GgufFile file = GgufFile::open(path);
  const LlamaConfig c = LlamaConfig::from_gguf(file);
  EXPECT_EQ(c.n_layer, spec.n_layer);
  EXPECT_EQ(c.head_dim, spec.n_embd / spec.n_head);
  EXPECT_EQ(c.n_rot, c.head_dim);              // rope.dimension_count absent
  EXPECT_EQ(c.n_vocab, spec.n_vocab);          // vocab_size absent: token_embd rows
  EXPECT_TRUE(c.tied_output);
  EXPECT_FALSE(c.has_rope_freqs);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace pdvm

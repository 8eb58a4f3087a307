// The generation loop on the default model (CPU reference backend, greedy): reusing the cached
// prefix gives what a fresh session gives, stop strings cut the text, and bad requests fail
// before touching the cache.
#include <gtest/gtest.h>

#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "pdvm/generator.h"
#include "pdvm/tokenizer.h"
#include "test_support.h"

namespace pdvm {
namespace {

SessionOptions options() {
  SessionOptions o;
  o.model_path = test::default_model_path();
  o.backend = "cpu-ref";
  o.n_ctx = 96;
  return o;
}

GenerationOptions greedy(int64_t n) {
  GenerationOptions g;
  g.n_predict = n;
  g.sampling.temperature = 0;
  return g;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

class GeneratorModel : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::require_default_model()) GTEST_SKIP() << "no default model";
    session_ = std::make_unique<Session>(options());
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_gguf(session_->gguf()));
  }
  std::vector<int32_t> encode(const std::string& text) const { return tokenizer_->encode(text, false, true); }
  // Generation from an empty cache, for comparison.
  GenerationStats fresh(std::span<const int32_t> context, const GenerationOptions& g) {
    Session session(options());
    Generator generator(session, *tokenizer_);
    return generator.generate(context, g, {});
  }

  std::unique_ptr<Session> session_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(GeneratorModel, ReusedPrefixGivesTheSameTextAsAFreshSession) {
  Generator generator(*session_, *tokenizer_);
  const auto first = encode("The river flows to the sea, and the");
  std::string streamed;
  const GenerationStats a = generator.generate(first, greedy(6), [&](std::string_view t) { streamed += t; });
  EXPECT_EQ(a.text, streamed);
  EXPECT_EQ(a.generated_tokens, 6);
  EXPECT_EQ(a.stop_reason, StopReason::kTokenLimit);
  EXPECT_EQ(a.prompt_tokens, static_cast<int64_t>(first.size()));
  EXPECT_EQ(a.text, fresh(first, greedy(6)).text);

  // A follow-up that extends everything in the cache: only the new tokens are prefilled.
  const std::vector<int32_t> cached = generator.history();
  EXPECT_EQ(static_cast<int64_t>(cached.size()), session_->n_past());
  const auto extended = concat(cached, encode(" Then the wind"));
  const GenerationStats b = generator.generate(extended, greedy(6), {});
  EXPECT_EQ(b.reused_tokens, static_cast<int64_t>(cached.size()));
  EXPECT_EQ(b.prompt_tokens, static_cast<int64_t>(extended.size() - cached.size()));
  EXPECT_EQ(b.text, fresh(extended, greedy(6)).text);

  // A context that leaves the cached one part-way: the cache is cut back to the common prefix.
  const size_t keep = first.size() - 3;
  const auto diverging = concat(std::vector<int32_t>(first.begin(), first.begin() + static_cast<ptrdiff_t>(keep)),
                                encode(" mountains rise above the"));
  const GenerationStats c = generator.generate(diverging, greedy(6), {});
  EXPECT_EQ(c.reused_tokens, static_cast<int64_t>(keep));
  EXPECT_EQ(c.text, fresh(diverging, greedy(6)).text);

  // Without reuse the whole context is prefilled, even where it extends the cached one.
  GenerationOptions no_reuse = greedy(6);
  no_reuse.reuse_cached_prefix = false;
  const auto again = concat(generator.history(), encode(" and"));
  const GenerationStats d = generator.generate(again, no_reuse, {});
  EXPECT_EQ(d.reused_tokens, 0);
  EXPECT_EQ(d.prompt_tokens, static_cast<int64_t>(again.size()));
  EXPECT_EQ(d.text, fresh(again, greedy(6)).text);
}

TEST_F(GeneratorModel, StopStringCutsTheText) {
  Generator generator(*session_, *tokenizer_);
  const auto prompt = encode("One, two, three, four,");
  const std::string full = generator.generate(prompt, greedy(12), {}).text;
  ASSERT_GE(full.size(), 6u) << full;
  GenerationOptions g = greedy(12);
  g.stop_strings = {full.substr(full.size() / 2, 2)};
  const GenerationStats cut = generator.generate(prompt, g, {});
  EXPECT_EQ(cut.stop_reason, StopReason::kStopString);
  EXPECT_EQ(cut.text, full.substr(0, full.find(g.stop_strings[0])));
}

TEST_F(GeneratorModel, PrefillOnlyAndContextLimits) {
  Generator generator(*session_, *tokenizer_);
  const auto prompt = encode("Hello there, general");
  const GenerationStats none = generator.generate(prompt, greedy(0), {});
  EXPECT_EQ(none.generated_tokens, 0);
  EXPECT_EQ(none.text, "");
  EXPECT_EQ(generator.history(), prompt);

  std::vector<int32_t> too_long(static_cast<size_t>(session_->n_ctx()) + 1, prompt.front());
  try {
    generator.generate(too_long, greedy(4), {});
    ADD_FAILURE() << "a prompt longer than the context was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kOutOfRange);
  }
  EXPECT_EQ(generator.history(), prompt);  // untouched
  EXPECT_EQ(session_->n_past(), static_cast<int64_t>(prompt.size()));

  // Unlimited generation ends at the latest when the context is full.
  const GenerationStats filled = generator.generate(
      std::vector<int32_t>(static_cast<size_t>(session_->n_ctx()) - 4, prompt.front()), greedy(-1), {});
  EXPECT_TRUE(filled.stop_reason == StopReason::kContextFull || filled.stop_reason == StopReason::kEndOfGeneration);
  EXPECT_LE(session_->n_past(), session_->n_ctx());
}

}  // namespace
}  // namespace pdvm

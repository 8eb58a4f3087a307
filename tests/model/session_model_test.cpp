// The session on the default model with the CPU reference backend: prefill and decode agree,
// and a truncated cache continues exactly like a fresh one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "pdvm/engine.h"
#include "pdvm/error.h"
#include "random_llama.h"
#include "test_support.h"

namespace pdvm {
namespace {

SessionOptions default_options() {
  SessionOptions o;
  o.model_path = test::default_model_path();
  o.backend = "cpu-ref";
  o.n_ctx = 128;
  return o;
}

TEST(SessionModel, PrefillEqualsDecodeSteps) {
  if (!test::require_default_model()) GTEST_SKIP() << "no default model";
  Session batched(default_options()), stepwise(default_options());
  const int64_t vocab = batched.n_vocab();
  const auto tokens = test::random_tokens(12, static_cast<int>(vocab));
  const auto batch_logits = batched.prefill_all(tokens);
  const std::vector<float> all(batch_logits.begin(), batch_logits.end());
  for (size_t t = 0; t < tokens.size(); ++t) {
    const auto logits = stepwise.decode(tokens[t]);
    EXPECT_LE(test::relative_difference(logits, {all.data() + t * vocab, static_cast<size_t>(vocab)}), 1e-5f)
        << "token " << t;
  }
}

TEST(SessionModel, TruncateThenContinueMatchesAFreshRun) {
  if (!test::require_default_model()) GTEST_SKIP() << "no default model";
  Session session(default_options());
  const int vocab = static_cast<int>(session.n_vocab());
  const auto prefix = test::random_tokens(8, vocab);
  const auto tail = test::random_tokens(4, vocab);
  std::vector<int32_t> full = prefix;
  full.insert(full.end(), tail.begin(), tail.end());

  session.prefill(test::random_tokens(20, vocab));
  session.reset();
  session.prefill(prefix);
  session.prefill(test::random_tokens(5, vocab));
  session.truncate(8);
  const auto tail_logits = session.prefill(tail);
  const std::vector<float> reused(tail_logits.begin(), tail_logits.end());

  Session fresh(default_options());
  EXPECT_LE(test::relative_difference(reused, fresh.prefill(full)), 1e-5f);
  EXPECT_EQ(session.n_past(), 12);
}

}  // namespace
}  // namespace pdvm

// Perplexity helpers without a model: statistics, window planning, the log-probability file
// and KL divergence, checked against direct double-precision computations on random logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <fstream>

#include "pdvm/error.h"
#include "pdvm/perplexity.h"
#include "test_support.h"

namespace pdvm {
namespace {

std::vector<double> exact_logprobs(const std::vector<float>& logits) {
  double max_value = -INFINITY;
  for (float v : logits) max_value = std::max(max_value, static_cast<double>(v));
  double sum = 0;
  for (float v : logits) sum += std::exp(v - max_value);
  std::vector<double> out;
  for (float v : logits) out.push_back(v - max_value - std::log(sum));
  return out;
}

// The largest logit minus the second largest.
float top_two_gap(std::vector<float> logits) {
  std::partial_sort(logits.begin(), logits.begin() + 2, logits.end(), std::greater<>());
  return logits[0] - logits[1];
}

std::filesystem::path temp_file(const std::string& name) {
  return std::filesystem::path(PDVM_BINARY_DIR) / ("perplexity_test_" + name);
}

TEST(Perplexity, MeanEstimateMatchesDirectFormulas) {
  std::vector<float> values = test::random_floats(1000, 2.0f);
  MeanEstimate estimate;
  double sum = 0;
  for (float v : values) {
    estimate.add(v);
    sum += v;
  }
  const double mean = sum / 1000;
  double ss = 0;
  for (float v : values) ss += (v - mean) * (v - mean);
  EXPECT_NEAR(estimate.mean(), mean, 1e-9);
  EXPECT_NEAR(estimate.standard_error(), std::sqrt(ss / 999 / 1000), 1e-9);
  EXPECT_NEAR(perplexity(estimate), std::exp(mean), 1e-9);
}

TEST(Perplexity, WindowsCoverTheSecondHalf) {
  const PerplexityWindows w = plan_windows(1000, 128, -1, -1);
  EXPECT_EQ(w.n_chunks, 7);
  EXPECT_EQ(w.first_scored(), 64);
  EXPECT_EQ(w.scored_per_chunk(), 63);  // predictions at 64..126 of tokens 65..127
  EXPECT_EQ(plan_windows(1000, 128, 3, -1).n_chunks, 3);
  EXPECT_THROW(plan_windows(100, 128, -1, -1), Error);
  EXPECT_THROW(plan_windows(100, 2, -1, -1), Error);
}

TEST(Perplexity, LogSoftmaxAtTarget) {
  std::vector<float> logits = test::random_floats(5000, 3.0f);
  const std::vector<double> want = exact_logprobs(logits);
  for (int32_t target : {0, 17, 4999}) EXPECT_NEAR(log_softmax_at(logits, target), want[target], 1e-9);
}

TEST(Perplexity, QuantizedRowsRoundTripThroughTheFile) {
  const auto path = temp_file("roundtrip.bin");
  const uint32_t n_vocab = 3000;
  std::vector<QuantizedLogProbs> written(5);
  {
    LogProbWriter writer(path, n_vocab, 64);
    for (auto& row : written) {
      std::vector<float> logits = test::random_floats(n_vocab, 4.0f);
      const int32_t target = static_cast<int32_t>(test::rng()() % n_vocab);
      quantize_logprobs(logits, target, row);
      // Within half a step of the exact value wherever it lies inside the kept range.
      const std::vector<double> exact = exact_logprobs(logits);
      EXPECT_NEAR(row.target_logprob, exact[target], 1e-5);
      for (size_t i = 0; i < n_vocab; ++i) {
        const double got = row.hi - row.q[i] * static_cast<double>(row.step);
        if (exact[i] > row.hi - kLogProbRange) {
          ASSERT_NEAR(got, exact[i], row.step * 0.5 + 1e-5) << i;
        }
      }
      writer.add(row);
    }
    writer.close();
  }
  LogProbReader reader(path);
  EXPECT_EQ(reader.n_vocab(), n_vocab);
  EXPECT_EQ(reader.n_ctx(), 64u);
  QuantizedLogProbs row;
  for (const auto& want : written) {
    reader.read(row);
    EXPECT_EQ(row.target, want.target);
    EXPECT_EQ(row.hi, want.hi);
    EXPECT_EQ(row.q, want.q);
  }
  EXPECT_THROW(reader.read(row), Error);  // past the end

  std::ofstream(temp_file("garbage.bin")) << "not a log-probability file";
  EXPECT_THROW(LogProbReader{temp_file("garbage.bin")}, Error);
}

TEST(Perplexity, KlDivergenceMatchesDirectComputation) {
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<float> base_logits = test::random_floats(2000, 2.0f);
    std::vector<float> other_logits = base_logits;
    const std::vector<float> noise = test::random_floats(2000, 0.05f * static_cast<float>(trial % 5));
    for (size_t i = 0; i < other_logits.size(); ++i) other_logits[i] += noise[i];

    QuantizedLogProbs base, other;
    quantize_logprobs(base_logits, 3, base);
    quantize_logprobs(other_logits, 3, other);
    const TokenDivergence self = compare_logprobs(base, base);
    EXPECT_EQ(self.kl, 0.0);
    EXPECT_TRUE(self.same_top1);

    const std::vector<double> p = exact_logprobs(base_logits), q = exact_logprobs(other_logits);
    double kl = 0;
    for (size_t i = 0; i < p.size(); ++i) kl += std::exp(p[i]) * (p[i] - q[i]);
    const TokenDivergence d = compare_logprobs(base, other);
    EXPECT_NEAR(d.kl, kl, 1e-4 + 1e-3 * kl) << "noise " << 0.05 * (trial % 5);
    const auto argmax = [](const std::vector<float>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
    // The file keeps log-probabilities in steps of `step`: where the best two logits are closer
    // than a step, both may round to the same level and the file cannot tell which one is top
    // (2000 logits of stddev 2 have such a near-tie in about 1 of 2500 rows).
    if (top_two_gap(base_logits) > base.step && top_two_gap(other_logits) > other.step) {
      EXPECT_EQ(d.same_top1, argmax(base_logits) == argmax(other_logits));
    }
  }
  QuantizedLogProbs a, b;
  std::vector<float> logits = test::random_floats(100);
  quantize_logprobs(logits, 1, a);
  quantize_logprobs(logits, 2, b);
  EXPECT_THROW(compare_logprobs(a, b), Error);  // different text
}

}  // namespace
}  // namespace pdvm

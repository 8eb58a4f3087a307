// Sampler tests: exact properties (support of top-k / top-p / min-p, greedy ties, penalties,
// seeding) on fresh random logits, and distributions checked against an independent
// double-precision computation with a chi-square bound.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "pdvm/error.h"
#include "pdvm/logits.h"
#include "pdvm/sampling.h"
#include "sampling/sampling_exp.h"
#include "test_support.h"

namespace pdvm {
namespace {

SamplingParams plain(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.repeat_penalty = 1.0f;
  p.seed = test::rng()();
  return p;
}

// Token ids ordered by descending logit (ties: lower id first).
std::vector<int32_t> ranking(const std::vector<float>& logits) {
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  return ids;
}

std::vector<double> softmax(const std::vector<float>& logits, double temperature) {
  double max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) total += p[i] = std::exp((logits[i] - max_logit) / temperature);
  for (double& v : p) v /= total;
  return p;
}

// Smallest prefix of the ranking whose softmax mass reaches top_p.
std::set<int32_t> nucleus(const std::vector<float>& logits, double top_p) {
  std::vector<double> p = softmax(logits, 1.0);
  std::set<int32_t> kept;
  double mass = 0;
  for (int32_t id : ranking(logits)) {
    kept.insert(id);
    mass += p[id];
    if (mass >= top_p) break;
  }
  return kept;
}

// Upper 1e-6 quantile of chi-square with df degrees of freedom (Wilson-Hilferty): a correct
// sampler fails this about once in a million runs.
double chi_square_bound(int df) {
  const double z = 4.75;
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + z * std::sqrt(a), 3.0);
}

// Draws n tokens and checks the frequencies against `expected` (zero-probability tokens must
// never appear).
void expect_distribution(Sampler& sampler, const std::vector<float>& logits,
                         const std::vector<double>& expected, int n) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < n; ++i) ++counts.at(static_cast<size_t>(sampler.sample(logits)));
  double chi2 = 0;
  int df = -1;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (expected[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    const double e = expected[i] * n;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
    ++df;
  }
  if (df > 0) {
    EXPECT_LT(chi2, chi_square_bound(df)) << "df " << df;
  }
}

std::vector<double> renormalized(const std::vector<float>& logits, const std::set<int32_t>& kept,
                                 double temperature) {
  std::vector<double> p = softmax(logits, temperature);
  double total = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (!kept.count(static_cast<int32_t>(i))) p[i] = 0;
    total += p[i];
  }
  for (double& v : p) v /= total;
  return p;
}

TEST(Sampling, GreedyPicksMaximumAndLowestIdOnTies) {
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> logits = test::random_floats(1000, 3.0f);
    Sampler greedy(plain(0.0f));
    const int32_t best = ranking(logits)[0];
    EXPECT_EQ(greedy.sample(logits), best);
    // Copy the maximum to two random places: the lowest of the three ids wins.
    std::uniform_int_distribution<size_t> pos(0, logits.size() - 1);
    size_t a = pos(test::rng()), b = pos(test::rng());
    logits[a] = logits[b] = logits[static_cast<size_t>(best)];
    EXPECT_EQ(greedy.sample(logits), std::min({static_cast<int32_t>(a), static_cast<int32_t>(b), best}));
  }
}

TEST(Sampling, TopKNeverLeavesTheKBest) {
  std::uniform_int_distribution<int> k_dist(1, 50);
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<float> logits = test::random_floats(2000, 2.0f);
    SamplingParams p = plain(1.0f + static_cast<float>(trial % 3));
    p.top_k = k_dist(test::rng());
    Sampler sampler(p);
    const int32_t token = sampler.sample(logits);
    std::vector<int32_t> order = ranking(logits);
    const auto rank = std::find(order.begin(), order.end(), token) - order.begin();
    ASSERT_LT(rank, p.top_k) << "token " << token << " outside the top " << p.top_k;
  }
}

TEST(Sampling, TopKWithTiedLogitsKeepsLowestIds) {
  std::vector<float> logits(100, 0.5f);
  SamplingParams p = plain(1.0f);
  p.top_k = 3;
  Sampler sampler(p);
  std::set<int32_t> seen;
  for (int i = 0; i < 2000; ++i) seen.insert(sampler.sample(logits));
  EXPECT_EQ(seen, (std::set<int32_t>{0, 1, 2}));
}

TEST(Sampling, TopPNeverLeavesTheSmallestNucleus) {
  std::uniform_real_distribution<float> p_dist(0.05f, 0.99f);
  for (int trial = 0; trial < 3000; ++trial) {
    // Large vocabulary with a peaked distribution: the sampler's partial sort must grow.
    std::vector<float> logits = test::random_floats(5000, trial % 2 ? 4.0f : 1.0f);
    SamplingParams p = plain(1.0f);
    p.top_p = p_dist(test::rng());
    Sampler sampler(p);
    const int32_t token = sampler.sample(logits);
    ASSERT_TRUE(nucleus(logits, p.top_p).count(token)) << "top_p " << p.top_p;
  }
}

TEST(Sampling, MinPKeepsOnlyTokensNearTheBest) {
  std::uniform_real_distribution<float> p_dist(0.01f, 0.9f);
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<float> logits = test::random_floats(3000, 2.0f);
    SamplingParams p = plain(1.5f);
    p.min_p = p_dist(test::rng());
    Sampler sampler(p);
    const int32_t token = sampler.sample(logits);
    std::vector<double> probs = softmax(logits, 1.0);
    const double best = *std::max_element(probs.begin(), probs.end());
    ASSERT_GE(probs[static_cast<size_t>(token)], p.min_p * best * (1 - 1e-5));
  }
}

TEST(Sampling, TemperatureMatchesSoftmaxFrequencies) {
  for (float temperature : {0.5f, 1.0f, 2.0f}) {
    std::vector<float> logits = test::random_floats(8, 1.0f);
    Sampler sampler(plain(temperature));
    expect_distribution(sampler, logits, softmax(logits, temperature), 200000);
  }
}

TEST(Sampling, TruncationsRenormalizeTheRest) {
  std::vector<float> logits = test::random_floats(12, 1.5f);
  {
    SamplingParams p = plain(0.7f);
    p.top_k = 5;
    std::vector<int32_t> order = ranking(logits);
    Sampler sampler(p);
    expect_distribution(sampler, logits,
                        renormalized(logits, std::set<int32_t>(order.begin(), order.begin() + 5), 0.7),
                        200000);
  }
  {
    SamplingParams p = plain(1.3f);
    p.top_p = 0.8f;
    Sampler sampler(p);
    expect_distribution(sampler, logits, renormalized(logits, nucleus(logits, 0.8), 1.3), 200000);
  }
  {
    SamplingParams p = plain(1.0f);
    p.min_p = 0.2f;
    std::vector<double> probs = softmax(logits, 1.0);
    const double best = *std::max_element(probs.begin(), probs.end());
    std::set<int32_t> kept;
    for (size_t i = 0; i < probs.size(); ++i) {
      if (probs[i] >= 0.2 * best) kept.insert(static_cast<int32_t>(i));
    }
    Sampler sampler(p);
    expect_distribution(sampler, logits, renormalized(logits, kept, 1.0), 200000);
  }
}

TEST(Sampling, RepeatPenaltyScalesDistinctRecentTokens) {
  for (int trial = 0; trial < 100; ++trial) {
    std::vector<float> logits = test::random_floats(500, 2.0f);
    std::uniform_int_distribution<int32_t> id(0, 499);
    std::vector<int32_t> history(200);
    for (int32_t& t : history) t = id(test::rng());
    const int32_t last_n = trial % 4 == 0 ? -1 : std::uniform_int_distribution<int32_t>(0, 200)(test::rng());
    const float penalty = std::uniform_real_distribution<float>(0.5f, 2.0f)(test::rng());

    std::vector<float> got = logits;
    apply_repeat_penalty(got, history, penalty, last_n);
    const size_t window = last_n < 0 ? history.size() : static_cast<size_t>(last_n);
    std::set<int32_t> recent(history.end() - static_cast<ptrdiff_t>(window), history.end());
    for (size_t i = 0; i < logits.size(); ++i) {
      float want = logits[i];
      if (recent.count(static_cast<int32_t>(i))) want = want > 0 ? want / penalty : want * penalty;
      ASSERT_EQ(got[i], want) << "token " << i;
    }
  }
}

TEST(Sampling, RepeatPenaltyChangesTheGreedyChoice) {
  std::vector<float> logits = test::random_floats(50, 0.1f);
  for (float& v : logits) v -= 1.0f;  // all well below the two contenders
  logits[7] = 2.0f;
  logits[9] = 1.5f;
  SamplingParams p = plain(0.0f);
  p.repeat_penalty = 1.5f;
  p.repeat_last_n = 3;
  Sampler sampler(p);
  const std::vector<int32_t> seen_7{7, 1, 2};
  EXPECT_EQ(sampler.sample(logits, seen_7), 9);  // 2.0 / 1.5 < 1.5
  const std::vector<int32_t> seen_7_long_ago{7, 1, 2, 3};
  EXPECT_EQ(sampler.sample(logits, seen_7_long_ago), 7);  // outside the window
  for (float& v : logits) v -= 3.0f;
  logits[7] = -1.0f;
  logits[9] = -1.2f;
  EXPECT_EQ(sampler.sample(logits, seen_7), 9);  // -1.0 * 1.5 < -1.2
}

TEST(Sampling, SameSeedSameSequenceDifferentSeedDifferent) {
  std::vector<float> logits = test::random_floats(32000, 1.0f);
  SamplingParams p;  // defaults: top-k, top-p, min-p and temperature all on
  p.top_p = 0.99f;
  p.min_p = 0.0f;
  p.seed = test::rng()();
  auto run = [&](uint64_t seed) {
    SamplingParams q = p;
    q.seed = seed;
    Sampler sampler(q);
    std::vector<int32_t> out;
    for (int i = 0; i < 300; ++i) out.push_back(sampler.sample(logits, out));
    return out;
  };
  EXPECT_EQ(run(p.seed), run(p.seed));
  EXPECT_NE(run(p.seed), run(p.seed + 1));
}

TEST(Sampling, InvalidParametersAreRejected) {
  auto expect_invalid = [](auto mutate) {
    SamplingParams p;
    mutate(p);
    try {
      Sampler sampler(p);
      ADD_FAILURE() << "accepted " << p.describe();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    }
  };
  expect_invalid([](SamplingParams& p) { p.temperature = -1; });
  expect_invalid([](SamplingParams& p) { p.temperature = NAN; });
  expect_invalid([](SamplingParams& p) { p.top_k = -2; });
  expect_invalid([](SamplingParams& p) { p.top_p = 0; });
  expect_invalid([](SamplingParams& p) { p.top_p = 1.5f; });
  expect_invalid([](SamplingParams& p) { p.min_p = -0.1f; });
  expect_invalid([](SamplingParams& p) { p.repeat_penalty = 0; });
  expect_invalid([](SamplingParams& p) { p.repeat_last_n = -5; });
}


// NaNs are passed over; a row without a finite maximum gives -1, whatever else it holds.
TEST(Sampling, FiniteArgmaxPassesOverNaNsAndRejectsRowsWithoutAFiniteMaximum) {
  std::uniform_int_distribution<size_t> pos(0, 499);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> logits = test::random_floats(500, 3.0f);
    const int32_t best = ranking(logits)[0];
    EXPECT_EQ(finite_argmax(logits.data(), logits.size()), best);
    size_t hole = pos(test::rng());
    if (hole == static_cast<size_t>(best)) hole = (hole + 1) % logits.size();
    logits[hole] = NAN;
    EXPECT_EQ(finite_argmax(logits.data(), logits.size()), best);
    logits[pos(test::rng())] = INFINITY;
    EXPECT_EQ(finite_argmax(logits.data(), logits.size()), -1);
    std::vector<float> broken(logits.size(), NAN);
    broken[pos(test::rng())] = -INFINITY;
    EXPECT_EQ(finite_argmax(broken.data(), broken.size()), -1);
    std::fill(broken.begin(), broken.end(), -INFINITY);
    EXPECT_EQ(finite_argmax(broken.data(), broken.size()), -1);
  }
}

// Broken logits stop generation with a numeric error instead of a token picked from garbage; the
// greedy pick, like the backends' argmax, passes over a NaN among finite logits.
TEST(Sampling, NonFiniteLogitsAreANumericError) {
  const auto expect_numeric = [](Sampler& sampler, const std::vector<float>& logits) {
    try {
      const int32_t token = sampler.sample(logits);
      ADD_FAILURE() << "sampled token " << token << " from broken logits";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kNumeric);
      EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
    }
  };
  std::uniform_int_distribution<size_t> pos(0, 299);
  for (float temperature : {0.0f, 0.7f, 1.5f}) {
    SamplingParams params = plain(temperature);
    params.top_k = temperature > 1.0f ? 40 : 0;
    params.top_p = temperature > 0.5f ? 0.9f : 1.0f;
    Sampler sampler(params);
    std::vector<float> logits = test::random_floats(300, 2.0f);
    expect_numeric(sampler, std::vector<float>(logits.size(), NAN));
    std::vector<float> with_inf = logits;
    with_inf[pos(test::rng())] = INFINITY;
    expect_numeric(sampler, with_inf);
    std::vector<float> with_nan = logits;
    const size_t hole = pos(test::rng());
    with_nan[hole] = NAN;
    if (temperature > 0.0f) {
      expect_numeric(sampler, with_nan);
    } else {
      logits[hole] = -INFINITY;
      EXPECT_EQ(sampler.sample(with_nan), ranking(logits)[0]);
    }
  }
}

// sample_top, given only the largest logits (as the GPU ranks them), picks what sample() picks
// from the whole row, draw for draw from the same seed: top-k with and without top-p, min-p and a
// repetition penalty above 1, logits with ties. A penalty below 1 or top-k off need the row.
TEST(Sampling, LargestLogitsGiveTheWholeRowsPicks) {
  std::uniform_int_distribution<int32_t> k_dist(1, 120);
  std::uniform_real_distribution<float> p_dist(0.3f, 1.0f);
  for (int trial = 0; trial < 60; ++trial) {
    SamplingParams params = plain(trial % 3 == 0 ? 1.6f : 0.8f);
    params.top_k = k_dist(test::rng());
    params.top_p = trial % 2 ? p_dist(test::rng()) : 1.0f;
    params.min_p = trial % 4 == 1 ? 0.05f : 0.0f;
    params.repeat_penalty = trial % 5 < 3 ? 1.3f : 1.0f;
    params.repeat_last_n = trial % 10 == 0 ? -1 : 64;
    Sampler whole(params), top(params);
    const size_t vocab = 3000;
    std::vector<int32_t> history(100);
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(vocab) - 1);
    for (int32_t& t : history) t = id(test::rng());
    for (int step = 0; step < 20; ++step) {
      std::vector<float> logits = test::random_floats(vocab, 2.0f);
      // Ties, some of them among the penalized tokens.
      for (int i = 0; i < 30; ++i) logits[id(test::rng())] = logits[history[i]];
      const std::vector<int32_t> order = ranking(logits);
      const size_t n = top.candidates_needed(vocab, history);
      ASSERT_GT(n, 0u);
      ASSERT_GE(n, static_cast<size_t>(params.top_k));
      std::vector<LogitCandidate> largest(n);
      for (size_t i = 0; i < n; ++i) largest[i] = {logits[order[i]], order[i]};
      const int32_t want = whole.sample(logits, history);
      ASSERT_EQ(top.sample_top(largest, vocab, history), want) << "trial " << trial << " step " << step;
      history.push_back(want);
    }
  }
  SamplingParams params = plain(0.8f);
  params.top_k = 40;
  params.repeat_penalty = 0.8f;
  EXPECT_EQ(Sampler(params).candidates_needed(3000, std::vector<int32_t>{5, 6}), 0u);
  EXPECT_EQ(Sampler(params).candidates_needed(3000, {}), 40u);
  params.top_k = 0;
  EXPECT_EQ(Sampler(params).candidates_needed(3000, {}), 0u);
  params.top_k = 40;
  params.temperature = 0.0f;
  EXPECT_EQ(Sampler(params).candidates_needed(3000, {}), 0u);
}

// sampling_exp (the sampler's exp, the same bits on host and device) against std::exp in double:
// within 2 float ulps over the weights' range, 0 below it, exact at 0.
TEST(Sampling, SamplingExpIsWithinTwoUlpsOfExp) {
  std::uniform_real_distribution<float> x_dist(-103.0f, 0.0f);
  double worst = 0.0;
  for (int i = 0; i < 200000; ++i) {
    const float x = i % 2 ? x_dist(test::rng()) : x_dist(test::rng()) / 100.0f;
    const double want = std::exp(static_cast<double>(x));
    const float got = sampling_exp(x);
    const double ulp = std::nextafter(static_cast<float>(want), INFINITY) - static_cast<float>(want);
    worst = std::max(worst, std::abs(got - want) / ulp);
  }
  EXPECT_LT(worst, 2.0);
  EXPECT_EQ(sampling_exp(0.0f), 1.0f);
  EXPECT_EQ(sampling_exp(-200.0f), 0.0f);
  EXPECT_EQ(sampling_exp(-INFINITY), 0.0f);
  std::printf("  worst error: %.3f ulp\n", worst);
}

// device_draw hands out the stream's next draw with the host's constants; put back, the next
// sample() uses that draw, so a failed device draw leaves the picks as if it never happened.
TEST(Sampling, DeviceDrawsTakeTheStreamsDrawsInOrder) {
  SamplingParams params = plain(0.7f);
  params.top_k = 50;
  params.top_p = 0.9f;
  params.min_p = 0.05f;
  Sampler drawing(params), plain_sampler(params);
  const size_t vocab = 2000;
  for (int step = 0; step < 40; ++step) {
    const std::vector<float> logits = test::random_floats(vocab, 2.5f);
    const std::optional<DeviceDraw> draw = drawing.device_draw(vocab, {});
    ASSERT_TRUE(draw.has_value());
    EXPECT_EQ(draw->top_k, 50);
    EXPECT_EQ(draw->log_min_p, std::log(0.05f));
    EXPECT_EQ(draw->inverse_temperature, 1.0f / 0.7f);
    ASSERT_GE(draw->uniform, 0.0);
    ASSERT_LT(draw->uniform, 1.0);
    if (step % 2) drawing.put_back(*draw);  // the device could not pick: the host does, same draw
    const int32_t want = plain_sampler.sample(logits);
    if (step % 2) {
      ASSERT_EQ(drawing.sample(logits), want) << "step " << step;
    }
  }
  SamplingParams penalized = params;
  penalized.repeat_penalty = 1.1f;
  EXPECT_FALSE(Sampler(penalized).device_draw(vocab, std::vector<int32_t>{1, 2}).has_value());
  EXPECT_TRUE(Sampler(penalized).device_draw(vocab, {}).has_value());
  params.top_k = 0;
  EXPECT_FALSE(Sampler(params).device_draw(vocab, {}).has_value());
}

}  // namespace
}  // namespace pdvm

// The largest logits ranked on the device (cuda::TopLogits, both ways: the logits above a bound
// from strip maxima up to kMaxFiltered, else a radix sort of the row) against a host sort in the
// Sampler's rank order, on fresh random rows with ties, signed zeros and infinities, and rows
// whose largest value repeats too often for the bound; rows with NaN are refused. Draws on the
// device against the Sampler.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "cuda/check.cuh"
#include "cuda/top_logits.cuh"
#include "pdvm/cuda_backend.h"
#include "pdvm/sampling.h"
#include "test_support.h"

namespace pdvm::cuda {
namespace {

class TopLogitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) {
      if (std::getenv("PDVM_REQUIRE_GPU")) ADD_FAILURE() << "no CUDA device but PDVM_REQUIRE_GPU is set";
      GTEST_SKIP() << "no CUDA device";
    }
    PDVM_CUDA_CHECK(cudaSetDevice(0));
    PDVM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (row_) cudaFree(row_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  void upload(const std::vector<float>& row) {
    if (row_) PDVM_CUDA_CHECK(cudaFree(row_));
    PDVM_CUDA_CHECK(cudaMalloc(&row_, row.size() * sizeof(float)));
    PDVM_CUDA_CHECK(cudaMemcpy(row_, row.data(), row.size() * sizeof(float), cudaMemcpyHostToDevice));
  }

  cudaStream_t stream_ = nullptr;
  float* row_ = nullptr;
};

std::vector<int32_t> host_ranking(const std::vector<float>& row) {
  std::vector<int32_t> ids(row.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
  return ids;
}

TEST_F(TopLogitsTest, RanksAsTheHostDoes) {
  for (int vocab : {500, 4096, 49152, 128256, -49152}) {
    const bool flat_top = vocab < 0;
    vocab = std::abs(vocab);
    std::vector<float> row = test::random_floats(static_cast<size_t>(vocab), 3.0f);
    std::uniform_int_distribution<int> pick(0, vocab - 1);
    if (flat_top) {
      // 3000 logits tie at the largest value: more above the bound than the filter holds.
      for (int i = 0; i < 3000; ++i) row[pick(test::rng())] = 20.0f;
    }
    // Ties (several among the largest), signed zeros and both infinities below the largest.
    const std::vector<int32_t> before = host_ranking(row);
    for (int i = 0; i < 20; ++i) row[pick(test::rng())] = row[before[i % 5]];
    for (int i = 0; i < 8; ++i) row[pick(test::rng())] = i % 2 ? 0.0f : -0.0f;
    row[pick(test::rng())] = -INFINITY;
    const std::vector<int32_t> want = host_ranking(row);
    TopLogits top(vocab);
    upload(row);
    for (int n : {1, 40, TopLogits::kMaxFiltered, TopLogits::kMaxFiltered + 1, vocab}) {
      if (n > vocab) continue;
      SCOPED_TRACE("vocab " + std::to_string(vocab) + (flat_top ? " flat top" : "") + " n " + std::to_string(n));
      std::vector<LogitCandidate> got;
      const bool finite = n < vocab;  // the whole row reaches the -inf
      ASSERT_EQ(top.rank(row_, n, stream_, got), finite);
      if (!finite) continue;
      ASSERT_EQ(got.size(), static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        ASSERT_EQ(got[i].id, want[i]) << "rank " << i;
        ASSERT_EQ(got[i].logit, row[want[i]]) << "rank " << i;
      }
    }
  }
}

TEST_F(TopLogitsTest, RowsWithNanOrTheLargestInfiniteAreRefused) {
  const int vocab = 49152;
  std::uniform_int_distribution<int> pick(0, vocab - 1);
  TopLogits top(vocab);
  std::vector<LogitCandidate> got;
  for (float bad : {NAN, -NAN, INFINITY}) {
    std::vector<float> row = test::random_floats(vocab, 2.0f);
    row[pick(test::rng())] = bad;
    upload(row);
    for (int n : {40, TopLogits::kMaxFiltered + 1}) EXPECT_FALSE(top.rank(row_, n, stream_, got)) << bad << " n " << n;
  }
  // The flag does not stick: a clean row after a NaN ranks.
  const std::vector<float> row = test::random_floats(vocab, 2.0f);
  upload(row);
  ASSERT_TRUE(top.rank(row_, 40, stream_, got));
  EXPECT_EQ(got[0].id, host_ranking(row)[0]);
}

// A draw on the device (queue_draw) picks what Sampler::sample() picks on the host from the same
// row with the same draw of the random stream, over random rows and parameters; rows it cannot
// draw from (too many ties at the bound, NaN, an infinite candidate) leave kNotDrawn and feed 0.
TEST_F(TopLogitsTest, DrawsWhatTheSamplerDraws) {
  const int vocab = 49152;
  TopLogits top(vocab);
  int* target = nullptr;  // [0] next token, [1] count, [2..] history
  PDVM_CUDA_CHECK(cudaMalloc(&target, 8 * sizeof(int)));
  const auto draw_on_device = [&](const std::vector<float>& row, const DeviceDraw& draw, int slot) {
    upload(row);
    const int init[8] = {-7, slot + 1, -7, -7, -7, -7, -7, -7};
    PDVM_CUDA_CHECK(cudaMemcpy(target, init, sizeof init, cudaMemcpyHostToDevice));
    top.queue_draw(row_, draw, {target, target + 1, target + 2}, stream_);
    int back[8];
    PDVM_CUDA_CHECK(cudaMemcpyAsync(back, target, sizeof back, cudaMemcpyDeviceToHost, stream_));
    PDVM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    EXPECT_EQ(back[0], back[2 + slot] < 0 ? 0 : back[2 + slot]);
    return back[2 + slot];
  };
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  int distinct = 0, previous = -1;
  for (int trial = 0; trial < 120; ++trial) {
    SamplingParams params;
    params.temperature = 0.3f + 1.5f * unit(test::rng());
    params.top_k = 1 + static_cast<int>(unit(test::rng()) * 255);
    params.top_p = trial % 3 == 0 ? 1.0f : 0.5f + 0.5f * unit(test::rng());
    params.min_p = trial % 4 == 0 ? 0.0f : 0.1f * unit(test::rng());
    params.seed = test::rng()();
    Sampler host(params), device(params);
    const std::vector<float> row = test::random_floats(vocab, 1.0f + 3.0f * unit(test::rng()));
    const std::optional<DeviceDraw> draw = device.device_draw(vocab, {});
    ASSERT_TRUE(draw.has_value());
    const int got = draw_on_device(row, *draw, trial % 6);
    ASSERT_EQ(got, host.sample(row)) << "trial " << trial << " top_k " << params.top_k;
    distinct += got != previous;
    previous = got;
  }
  EXPECT_GT(distinct, 60);  // the draws do differ
  std::uniform_int_distribution<int> pick(0, vocab - 1);
  SamplingParams params;
  Sampler sampler(params);
  const DeviceDraw draw = *sampler.device_draw(vocab, {});
  std::vector<float> flat = test::random_floats(vocab, 2.0f);
  for (int i = 0; i < 3000; ++i) flat[pick(test::rng())] = 20.0f;
  EXPECT_EQ(draw_on_device(flat, draw, 0), kNotDrawn);
  std::vector<float> with_nan = test::random_floats(vocab, 2.0f);
  with_nan[pick(test::rng())] = NAN;
  EXPECT_EQ(draw_on_device(with_nan, draw, 1), kNotDrawn);
  std::vector<float> with_inf = test::random_floats(vocab, 2.0f);
  with_inf[pick(test::rng())] = INFINITY;
  EXPECT_EQ(draw_on_device(with_inf, draw, 2), kNotDrawn);
  PDVM_CUDA_CHECK(cudaFree(target));
}

}  // namespace
}  // namespace pdvm::cuda

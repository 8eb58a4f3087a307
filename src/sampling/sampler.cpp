#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "pdvm/error.h"
#include "pdvm/logits.h"
#include "pdvm/sampling.h"
#include "sampling/sampling_exp.h"

namespace pdvm {

namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw_error(ErrorKind::kInvalidArgument, message);
}

}  // namespace

void SamplingParams::validate() const {
  require(std::isfinite(temperature) && temperature >= 0.0f,
          fmt::format("temperature must be >= 0 (0 = greedy), got {}", temperature));
  require(top_k >= 0, fmt::format("top-k must be >= 0 (0 = off), got {}", top_k));
  require(std::isfinite(top_p) && top_p > 0.0f && top_p <= 1.0f,
          fmt::format("top-p must be in (0, 1] (1 = off), got {}", top_p));
  require(std::isfinite(min_p) && min_p >= 0.0f && min_p <= 1.0f,
          fmt::format("min-p must be in [0, 1] (0 = off), got {}", min_p));
  require(std::isfinite(repeat_penalty) && repeat_penalty > 0.0f,
          fmt::format("repeat penalty must be > 0 (1 = off), got {}", repeat_penalty));
  require(repeat_last_n >= -1,
          fmt::format("repeat-last-n must be >= -1 (-1 = whole history), got {}", repeat_last_n));
}

std::string SamplingParams::describe() const {
  if (temperature <= 0.0f) {
    return fmt::format("greedy, repeat_penalty = {} over {}", repeat_penalty, repeat_last_n);
  }
  return fmt::format(
      "temp = {}, top_k = {}, top_p = {}, min_p = {}, repeat_penalty = {} over {}, seed = {}",
      temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed);
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  params_.validate();
}

double Sampler::uniform() {
  if (put_back_) {
    const double u = *put_back_;
    put_back_.reset();
    return u;
  }
  // The top 53 bits as a fraction: std::uniform_real_distribution differs between libraries.
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

namespace {

// Strict "ranks before": larger logit first, lower id first among equal logits.
template <typename C>
bool ranks_before(const C& a, const C& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

}  // namespace

namespace {

std::vector<int32_t> distinct_tail(std::span<const int32_t> history, int32_t last_n) {
  size_t n = history.size();
  if (last_n >= 0) n = std::min(n, static_cast<size_t>(last_n));
  std::vector<int32_t> ids(history.end() - static_cast<ptrdiff_t>(n), history.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

float penalized(float logit, float penalty) { return logit > 0.0f ? logit / penalty : logit * penalty; }

}  // namespace

void apply_repeat_penalty(std::span<float> logits, std::span<const int32_t> history, float penalty,
                          int32_t last_n) {
  for (int32_t id : distinct_tail(history, last_n)) {
    if (id < 0 || static_cast<size_t>(id) >= logits.size()) continue;
    float& logit = logits[static_cast<size_t>(id)];
    logit = penalized(logit, penalty);
  }
}

void Sampler::keep_top_k(std::span<const float> logits, size_t k) {
  // A bounded heap whose front is the worst kept candidate: one comparison for most logits.
  candidates_.clear();
  const auto worse_on_top = [](const Candidate& a, const Candidate& b) { return ranks_before(a, b); };
  for (size_t i = 0; i < logits.size(); ++i) {
    Candidate c{logits[i], static_cast<int32_t>(i)};
    if (candidates_.size() < k) {
      candidates_.push_back(c);
      std::push_heap(candidates_.begin(), candidates_.end(), worse_on_top);
    } else if (ranks_before(c, candidates_.front())) {
      std::pop_heap(candidates_.begin(), candidates_.end(), worse_on_top);
      candidates_.back() = c;
      std::push_heap(candidates_.begin(), candidates_.end(), worse_on_top);
    }
  }
  std::sort_heap(candidates_.begin(), candidates_.end(), worse_on_top);
  candidates_sorted_ = true;
}

double Sampler::nucleus_weight(float x) const {
  return after_top_k_ ? sampling_exp(x) : std::exp(static_cast<double>(x));
}

float Sampler::draw_weight(float x) const { return after_top_k_ ? sampling_exp(x) : std::exp(x); }

void Sampler::keep_top_p(float p) {
  const auto by_rank = [](const Candidate& a, const Candidate& b) { return ranks_before(a, b); };
  float max_logit = -std::numeric_limits<float>::infinity();
  for (const Candidate& c : candidates_) max_logit = std::max(max_logit, c.logit);
  double total = 0.0;
  for (const Candidate& c : candidates_) total += nucleus_weight(c.logit - max_logit);
  const double target = static_cast<double>(p) * total;

  // Sort only as much of the front as the nucleus needs, growing the sorted prefix as required.
  size_t sorted = candidates_sorted_ ? candidates_.size() : 0;
  size_t want = std::min<size_t>(64, candidates_.size());
  double mass = 0.0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    if (i == sorted) {
      want = std::min(candidates_.size(), std::max(want, i * 8));
      // Select the next block, then sort just that block: O(n + m log m), not partial_sort's
      // O(n log m), which matters when a flat distribution needs a large nucleus.
      const auto block_begin = candidates_.begin() + static_cast<ptrdiff_t>(i);
      const auto block_end = candidates_.begin() + static_cast<ptrdiff_t>(want);
      if (block_end != candidates_.end()) std::nth_element(block_begin, block_end - 1, candidates_.end(), by_rank);
      std::sort(block_begin, block_end, by_rank);
      sorted = want;
    }
    mass += nucleus_weight(candidates_[i].logit - max_logit);
    if (mass >= target) {
      candidates_.resize(i + 1);
      break;
    }
  }
  candidates_sorted_ = true;
}

void Sampler::keep_min_p(float min_p) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (const Candidate& c : candidates_) max_logit = std::max(max_logit, c.logit);
  // p_i >= min_p * p_max  <=>  logit_i >= max_logit + log(min_p)
  const float threshold = max_logit + std::log(min_p);
  std::erase_if(candidates_, [threshold](const Candidate& c) { return c.logit < threshold; });
}

int32_t Sampler::draw(float temperature) {
  PDVM_CHECK(!candidates_.empty());
  float max_logit = -std::numeric_limits<float>::infinity();
  for (const Candidate& c : candidates_) max_logit = std::max(max_logit, c.logit);
  const float inv_t = 1.0f / temperature;
  weights_.resize(candidates_.size());
  double total = 0.0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    weights_[i] = draw_weight((candidates_[i].logit - max_logit) * inv_t);
    total += weights_[i];
  }
  const double target = uniform() * total;
  double mass = 0.0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    mass += weights_[i];
    if (target < mass) return candidates_[i].id;
  }
  return candidates_.back().id;  // rounding left target at the very end of the mass
}

bool Sampler::penalizes(std::span<const int32_t> history) const {
  return params_.repeat_penalty != 1.0f && params_.repeat_last_n != 0 && !history.empty();
}

std::vector<int32_t> Sampler::penalized_ids(std::span<const int32_t> history) const {
  return penalizes(history) ? distinct_tail(history, params_.repeat_last_n) : std::vector<int32_t>{};
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  PDVM_CHECK_MSG(!logits.empty(), "sampling from an empty logits vector");
  std::span<const float> working = logits;
  if (penalizes(history)) {
    penalized_.assign(logits.begin(), logits.end());
    apply_repeat_penalty(penalized_, history, params_.repeat_penalty, params_.repeat_last_n);
    working = penalized_;
  }
  // The greedy pick passes over NaNs like the backends' argmax; sampling refuses any, since a NaN
  // breaks the orderings below (and only broken weights or an overflow produce one).
  const int32_t greedy = finite_argmax(working.data(), working.size());
  const auto is_nan = [](float v) { return std::isnan(v); };
  if (greedy < 0 || (params_.temperature > 0.0f && std::ranges::any_of(working, is_nan)))
    throw_non_finite_logits("at sampling");
  if (params_.temperature <= 0.0f) return greedy;

  const size_t vocab = working.size();
  after_top_k_ = cuts_top_k(vocab);
  if (after_top_k_) {
    keep_top_k(working, static_cast<size_t>(params_.top_k));
  } else {
    candidates_.resize(vocab);
    for (size_t i = 0; i < vocab; ++i) candidates_[i] = {working[i], static_cast<int32_t>(i)};
    candidates_sorted_ = false;
  }
  return sample_candidates();
}

bool Sampler::cuts_top_k(size_t vocab) const {
  const size_t k = static_cast<size_t>(params_.top_k);
  return k > 0 && k < vocab;
}

size_t Sampler::candidates_needed(size_t vocab, std::span<const int32_t> history) const {
  const size_t k = static_cast<size_t>(params_.top_k);
  if (params_.temperature <= 0.0f || !cuts_top_k(vocab)) return 0;
  if (!penalizes(history)) return k;
  // A penalty above 1 only lowers logits: the k best afterwards are among the k + (lowered ones) best before.
  if (params_.repeat_penalty < 1.0f) return 0;
  return std::min(vocab, k + penalized_ids(history).size());
}

int32_t Sampler::sample_top(std::span<const LogitCandidate> top, size_t vocab, std::span<const int32_t> history) {
  const size_t needed = candidates_needed(vocab, history);
  PDVM_CHECK_MSG(needed > 0 && top.size() >= needed, "sampling: too few of the largest logits");
  candidates_.assign(top.begin(), top.end());
  const std::vector<int32_t> lowered = penalized_ids(history);
  if (!lowered.empty()) {
    for (Candidate& c : candidates_) {
      if (std::binary_search(lowered.begin(), lowered.end(), c.id)) c.logit = penalized(c.logit, params_.repeat_penalty);
    }
    std::sort(candidates_.begin(), candidates_.end(), [](const Candidate& a, const Candidate& b) { return ranks_before(a, b); });
  }
  candidates_.resize(static_cast<size_t>(params_.top_k));
  candidates_sorted_ = true;
  after_top_k_ = true;
  return sample_candidates();
}

std::optional<DeviceDraw> Sampler::device_draw(size_t vocab, std::span<const int32_t> history) {
  if (params_.temperature <= 0.0f || !cuts_top_k(vocab) || penalizes(history)) return std::nullopt;
  DeviceDraw d;
  d.top_k = params_.top_k;
  d.top_p = params_.top_p;
  d.min_p_on = params_.min_p > 0.0f;
  d.log_min_p = d.min_p_on ? std::log(params_.min_p) : 0.0f;
  d.inverse_temperature = 1.0f / params_.temperature;
  d.uniform = uniform();
  return d;
}

void Sampler::put_back(const DeviceDraw& draw) {
  PDVM_CHECK(!put_back_);
  put_back_ = draw.uniform;
}

int32_t Sampler::sample_candidates() {
  if (params_.top_p < 1.0f) keep_top_p(params_.top_p);
  if (params_.min_p > 0.0f) keep_min_p(params_.min_p);
  return draw(params_.temperature);
}

}  // namespace pdvm

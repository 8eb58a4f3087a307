// Token sampling from a logits vector.
//
// Pipeline, in this order (the order of llama.cpp's default chain):
//   1. repetition penalty over the last repeat_last_n tokens of the history (each distinct token
//      once: a positive logit is divided by repeat_penalty, a negative one multiplied by it);
//   2. top-k: keep the k largest logits;
//   3. top-p: keep the smallest set of most likely tokens whose probability mass (softmax of the
//      remaining logits at temperature 1) reaches top_p;
//   4. min-p: keep tokens whose probability is at least min_p times the most likely one's;
//   5. temperature: draw from softmax(logit / temperature) over what is left.
// temperature <= 0 means greedy: the largest penalized logit, the lowest token id on ties
// (steps 2-4 never remove the maximum, so they are skipped).
// Ties everywhere are broken towards the lower token id, so results do not depend on the
// standard library's sort. The random stream is the Sampler's own, seeded explicitly.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "pdvm/logits.h"

namespace pdvm {

struct SamplingParams {
  float temperature = 0.8f;     // <= 0: greedy
  int32_t top_k = 40;           // <= 0 or >= vocabulary size: off
  float top_p = 0.95f;          // >= 1: off
  float min_p = 0.05f;          // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int32_t repeat_last_n = 64;   // how many of the latest history tokens are penalized; 0: off
  uint64_t seed = 0;

  // Throws Error(kInvalidArgument) naming the bad field (negative temperature, top_p <= 0, ...).
  void validate() const;
  std::string describe() const;  // one line, for logs
};

// Step 1 on its own, in place: each distinct token among the last `last_n` of history (all of it
// when last_n is -1) gets logit / penalty if positive, logit * penalty otherwise.
void apply_repeat_penalty(std::span<float> logits, std::span<const int32_t> history, float penalty,
                          int32_t last_n);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks the next token. history: the tokens so far (prompt and generated), whose tail feeds
  // the repetition penalty. Ids in history outside the vocabulary are ignored.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history = {});

  // How many of a row's largest logits sample_top needs to pick what sample() would, for a
  // vocabulary of `vocab` ids and this history: top_k, plus the tokens the penalty lowers. 0 when
  // sample() needs the whole row (greedy, top-k off, or a penalty below 1, which raises logits).
  size_t candidates_needed(size_t vocab, std::span<const int32_t> history) const;
  // sample() given only `top`, at least candidates_needed() of the row's largest finite logits in
  // rank order (larger first, lower id first among equal ones), over a row without NaNs: the same
  // token, and the same draws from the random stream.
  int32_t sample_top(std::span<const LogitCandidate> top, size_t vocab, std::span<const int32_t> history = {});
  // sample() as a device runs it on the row's top_k largest logits (DeviceDraw), taking the
  // random stream's next draw for it. nullopt when the sampler needs more (a repetition
  // penalty, top-k off, greedy).
  std::optional<DeviceDraw> device_draw(size_t vocab, std::span<const int32_t> history);
  // When the device could not pick: the next sample() or sample_top() uses that draw again.
  void put_back(const DeviceDraw& draw);

  const SamplingParams& params() const { return params_; }

 private:
  using Candidate = LogitCandidate;
  bool penalizes(std::span<const int32_t> history) const;
  bool cuts_top_k(size_t vocab) const;  // top-k on, and below the vocabulary
  // The distinct ids among the penalized tail of history.
  std::vector<int32_t> penalized_ids(std::span<const int32_t> history) const;
  int32_t sample_candidates();  // top-p, min-p, temperature over candidates_
  // exp(x) of a logit minus the largest (over the temperature in the draw), as after_top_k_ says.
  double nucleus_weight(float x) const;
  float draw_weight(float x) const;
  void keep_top_k(std::span<const float> logits, size_t k);
  void keep_top_p(float p);
  void keep_min_p(float min_p);
  int32_t draw(float temperature);
  double uniform();  // [0, 1), identical on every platform

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::optional<double> put_back_;        // a draw to use before the stream's next
  // Whether top-k cut the candidates: their weights then use sampling_exp, which a device draw
  // repeats bit for bit (src/sampling/sampling_exp.h); a whole row's use the faster std::exp.
  bool after_top_k_ = false;
  std::vector<float> penalized_;          // logits after the penalty (only when it is on)
  std::vector<Candidate> candidates_;
  std::vector<float> weights_;            // unnormalized probabilities of the final draw
  bool candidates_sorted_ = false;        // descending logit, ascending id on ties
};

}  // namespace pdvm
